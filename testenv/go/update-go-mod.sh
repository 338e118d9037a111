#!/usr/bin/env bash
# Regenerates go.mod/go.sum for the pinned control-plane binaries.
# The k8s.io/kubernetes module maps its staging modules to ./staging, which a module
# download does not contain; every staging module it *requires* is replaced here by the
# published k8s.io/<name> v0.<minor>.<patch> of the same release. The list comes from the
# real go.mod of k8s.io/kubernetes, never by hand.
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
staging_version="v0.${K8S_VERSION#v1.}"

modfile=$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
required=$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r{print $1}' "$modfile")

(
  cd kubernetes
  {
    echo "module kvtenant.dev/testenv/kubernetes"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    echo "replace ("
    grep -E '^\s+k8s\.io/[a-z0-9-]+ => \./staging/' "$modfile" | awk '{print $1}' | while read -r m; do
      if grep -qx "$m" <<<"$required"; then
        printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"
      fi
    done
    echo ")"
  } > go.mod
  go mod tidy
)
(
  cd etcd
  printf 'module kvtenant.dev/testenv/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
  go mod tidy
)
