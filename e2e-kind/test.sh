#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Runs the e2e scenarios (tests/e2e_kind.rs, ignored by a plain `cargo test`) against the kind
# cluster and virtual cluster that e2e-kind/up.sh made. Extra arguments go to the test binary,
# e.g. `e2e-kind/test.sh --nocapture` (the console output and observations).
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

need cargo "the Rust toolchain"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
[[ -f "${HOST_KUBECONFIG}" && -f "${TENANT_KUBECONFIG}" ]] \
  || die "no kind cluster state in ${STATE_DIR}: run e2e-kind/up.sh first"
hk get --raw /readyz >/dev/null || die "kind cluster ${CLUSTER_NAME} does not answer: run e2e-kind/up.sh"
kubectl --kubeconfig "${TENANT_KUBECONFIG}" get --raw /readyz >/dev/null \
  || die "virtual cluster ${VC_NAMESPACE}/${VC_NAME} does not answer: run e2e-kind/up.sh"
[[ -f "${ROOT_DIR}/tests/e2e_kind.rs" ]] \
  || die "tests/e2e_kind.rs (the e2e scenarios) does not exist yet; see e2e-kind/README.md"

export KVTENANT_E2E_HOST_KUBECONFIG="${HOST_KUBECONFIG}"
export KVTENANT_E2E_TENANT_KUBECONFIG="${TENANT_KUBECONFIG}"
export KVTENANT_E2E_VIRTUALCLUSTER="${VC_NAMESPACE}/${VC_NAME}"
# the stop/start scenario runs the real virtctl (KubeVirt's release binary, downloaded once)
VIRTCTL="${STATE_DIR}/virtctl-${KUBEVIRT_VERSION}"
if [[ ! -x "${VIRTCTL}" ]]; then
  if ! curl -fsSL -o "${VIRTCTL}" "${VIRTCTL_URL}"; then
    die "cannot download virtctl from ${VIRTCTL_URL}"
  fi
  chmod +x "${VIRTCTL}"
fi
export VIRTCTL
cd "${ROOT_DIR}"
# one at a time: the scenarios share one virtual cluster and boot real (emulated) VMs
cargo test --locked --test e2e_kind -- --ignored --test-threads=1 "$@"
