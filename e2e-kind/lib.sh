#!/usr/bin/env bash
# shellcheck disable=SC2034  # variables used by the scripts that source this file
# Shared settings of up.sh, test.sh and down.sh (sourced, not run). Versions are pinned here.
set -euo pipefail

# --- pinned versions -------------------------------------------------------------------------
# kind CLI these scripts were written against (checked, warned about when different).
KIND_VERSION="v0.32.0"
# kind v0.32.0's default node image (Kubernetes v1.36.1), by digest.
KIND_NODE_IMAGE="kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
# KubeVirt (supports Kubernetes 1.34-1.36) and CDI, from their release manifests.
KUBEVIRT_VERSION="v1.9.0"
KUBEVIRT_OPERATOR_URL="https://github.com/kubevirt/kubevirt/releases/download/${KUBEVIRT_VERSION}/kubevirt-operator.yaml"
KUBEVIRT_CR_URL="https://github.com/kubevirt/kubevirt/releases/download/${KUBEVIRT_VERSION}/kubevirt-cr.yaml"
VIRTCTL_URL="https://github.com/kubevirt/kubevirt/releases/download/${KUBEVIRT_VERSION}/virtctl-${KUBEVIRT_VERSION}-linux-amd64"
CDI_VERSION="v1.66.0"
CDI_OPERATOR_URL="https://github.com/kubevirt/containerized-data-importer/releases/download/${CDI_VERSION}/cdi-operator.yaml"
CDI_CR_URL="https://github.com/kubevirt/containerized-data-importer/releases/download/${CDI_VERSION}/cdi-cr.yaml"

# --- names and paths -------------------------------------------------------------------------
CLUSTER_NAME="${KVTENANT_KIND_CLUSTER:-kvtenant}"
VC_NAME="${KVTENANT_E2E_VC:-demo}"
VC_NAMESPACE="vc-${VC_NAME}"
IMAGE="kvtenant:dev"
# the node port of kvtenant's upload route (virtctl image-upload from this machine)
UPLOAD_NODE_PORT=31443

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "${E2E_DIR}/.." && pwd)"
# Everything the scripts write (kubeconfigs, values) stays here; your ~/.kube/config is untouched.
STATE_DIR="${E2E_DIR}/.state"
HOST_KUBECONFIG="${STATE_DIR}/host.kubeconfig"
TENANT_KUBECONFIG="${STATE_DIR}/tenant.kubeconfig"

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required on PATH ($2)"; }

# kubectl against the kind (host) cluster
hk() { kubectl --kubeconfig "${HOST_KUBECONFIG}" "$@"; }
