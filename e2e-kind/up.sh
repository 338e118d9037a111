#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# kvtenant demo on kind, with real KubeVirt (software emulation) and CDI:
#   1. a kind cluster (e2e-kind/kind-config.yaml, pinned node image)
#   2. KubeVirt and CDI from their release manifests (versions pinned in e2e-kind/lib.sh)
#   3. the kvtenant image built with Docker and loaded into kind (kvtenant:dev)
#   4. kvtenant installed from deploy/overlays/kind
#   5. a managed VirtualCluster "demo" (NodePort), and its kubeconfig in e2e-kind/.state/
# Safe to run again: every step skips or updates what exists. Needs Docker, kind, kubectl,
# cargo, and about 8 GB of free memory. Linux: the tenant apiserver is reached on the kind
# node's IP, which Docker Desktop (macOS, Windows) does not route to the host.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

need docker "https://docs.docker.com/engine/install/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (${KIND_VERSION})"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need cargo "the Rust toolchain, for the kvtenant CLI"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"
kind_version="$(kind version -q 2>/dev/null || true)"
if [[ "v${kind_version}" != "${KIND_VERSION}" ]]; then
  printf 'warning: kind %s found; these scripts were written for %s\n' "${kind_version:-?}" "${KIND_VERSION}" >&2
fi
mkdir -p "${STATE_DIR}"

log "kind cluster ${CLUSTER_NAME}"
clusters="$(kind get clusters 2>/dev/null || true)"
if grep -qx "${CLUSTER_NAME}" <<<"${clusters}"; then
  echo "exists; reusing it"
else
  kind create cluster --name "${CLUSTER_NAME}" --image "${KIND_NODE_IMAGE}" \
    --config "${E2E_DIR}/kind-config.yaml" --kubeconfig "${HOST_KUBECONFIG}" --wait 5m
fi
kind export kubeconfig --name "${CLUSTER_NAME}" --kubeconfig "${HOST_KUBECONFIG}"

log "KubeVirt ${KUBEVIRT_VERSION} (software emulation)"
# server-side: the KubeVirt CRD is too large for client-side apply's annotation
hk apply --server-side -f "${KUBEVIRT_OPERATOR_URL}"
hk wait crd/kubevirts.kubevirt.io --for condition=Established --timeout=2m
hk apply --server-side -f "${KUBEVIRT_CR_URL}"
hk -n kubevirt patch kubevirt kubevirt --type merge \
  -p '{"spec":{"configuration":{"developerConfiguration":{"useEmulation":true,"featureGates":["Snapshot","VMExport","DeclarativeHotplugVolumes"]}}}}'
hk -n kubevirt wait kubevirt/kubevirt --for condition=Available --timeout=20m

log "CDI ${CDI_VERSION}"
hk apply --server-side -f "${CDI_OPERATOR_URL}"
hk wait crd/cdis.cdi.kubevirt.io --for condition=Established --timeout=2m
hk apply --server-side -f "${CDI_CR_URL}"
hk wait cdi/cdi --for condition=Available --timeout=20m

log "image ${IMAGE}"
docker build -t "${IMAGE}" "${ROOT_DIR}"
kind load docker-image "${IMAGE}" --name "${CLUSTER_NAME}"

node_ip="$(hk get node "${CLUSTER_NAME}-control-plane" \
  -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"
[[ -n "${node_ip}" ]] || die "could not read the InternalIP of node ${CLUSTER_NAME}-control-plane"

log "kvtenant (deploy/overlays/kind)"
hk apply --server-side -k "${ROOT_DIR}/deploy/overlays/kind"
# tenants' virtctl image-upload reaches kvtenant's upload route (the syncer's proxy port) on
# the node's IP, and each virtual cluster's CDIConfig names that address (--cdi-upload-url)
hk apply --server-side -f - <<UPLOAD
apiVersion: v1
kind: Service
metadata:
  name: kvtenant-upload
  namespace: kvtenant-system
spec:
  type: NodePort
  selector:
    app.kubernetes.io/name: kvtenant
    app.kubernetes.io/component: syncer
  ports:
    - name: https
      port: 443
      targetPort: proxy
      nodePort: ${UPLOAD_NODE_PORT}
UPLOAD
hk -n kvtenant-system set env deployment/kvtenant-syncer \
  "KVTENANT_CDI_UPLOAD_URL=https://${node_ip}:${UPLOAD_NODE_PORT}"
# the tag stays kvtenant:dev across rebuilds: restart so the pods run the image just loaded
hk -n kvtenant-system rollout restart deployment/kvtenant-controller deployment/kvtenant-syncer
hk -n kvtenant-system rollout status deployment/kvtenant-controller --timeout=5m
hk -n kvtenant-system rollout status deployment/kvtenant-syncer --timeout=5m

log "kvtenant CLI"
(cd "${ROOT_DIR}" && cargo build --locked --bin kvtenant)
KVTENANT="${CARGO_TARGET_DIR:-${ROOT_DIR}/target}/debug/kvtenant"

log "VirtualCluster ${VC_NAMESPACE}/${VC_NAME}"
if hk -n "${VC_NAMESPACE}" get virtualcluster "${VC_NAME}" >/dev/null 2>&1; then
  echo "exists; reusing it"
else
  # NodePort on the node's IP: reachable from the kvtenant pods and from this (Linux) machine
  cat >"${STATE_DIR}/values.yaml" <<VALUES
expose:
  type: NodePort
  extraSANs: ["${node_ip}"]
kubevirt:
  syncKinds: [VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachinePool, VirtualMachineClone, DataVolume, VirtualMachineSnapshot, VirtualMachineExport]
VALUES
  "${KVTENANT}" --kubeconfig "${HOST_KUBECONFIG}" create "${VC_NAME}" \
    -n "${VC_NAMESPACE}" -f "${STATE_DIR}/values.yaml" --timeout 900
fi

log "connect"
# --print writes the tenant kubeconfig to a file instead of switching contexts in a kubeconfig
"${KVTENANT}" --kubeconfig "${HOST_KUBECONFIG}" connect "${VC_NAME}" -n "${VC_NAMESPACE}" --print \
  >"${TENANT_KUBECONFIG}"
kubectl --kubeconfig "${TENANT_KUBECONFIG}" get namespace default >/dev/null \
  || die "the virtual cluster does not answer through ${TENANT_KUBECONFIG}"

cat <<DONE

kvtenant is up on kind cluster ${CLUSTER_NAME}, with virtual cluster ${VC_NAMESPACE}/${VC_NAME}.
  host:    kubectl --kubeconfig ${HOST_KUBECONFIG} get vc -A
  tenant:  kubectl --kubeconfig ${TENANT_KUBECONFIG} apply -f ${ROOT_DIR}/samples/vm-cloudinit.yaml
           kubectl --kubeconfig ${TENANT_KUBECONFIG} get vm,vmi -w
  console: virtctl --kubeconfig ${TENANT_KUBECONFIG} console vm1   (virtctl: ${VIRTCTL_URL})
  tests:   e2e-kind/test.sh        remove: e2e-kind/down.sh
DONE
