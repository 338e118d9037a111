#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deletes the kind cluster of e2e-kind/up.sh and the files it wrote in e2e-kind/.state/.
# The image kvtenant:dev stays in Docker (docker image rm kvtenant:dev).
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
clusters="$(kind get clusters 2>/dev/null || true)"
if grep -qx "${CLUSTER_NAME}" <<<"${clusters}"; then
  kind delete cluster --name "${CLUSTER_NAME}"
else
  echo "no kind cluster ${CLUSTER_NAME}"
fi
rm -rf "${STATE_DIR}"
