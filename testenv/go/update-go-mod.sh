#!/usr/bin/env bash
# Regenerates go.mod/go.sum for the pinned control-plane binaries (the versions must match
# testenv/src/versions.rs).
# The k8s.io/kubernetes module maps its staging modules to ./staging, which a module
# download does not contain; every staging module it *requires* is replaced here by the
# published k8s.io/<name> v0.<minor>.<patch> of the same release. The list comes from the
# real go.mod of k8s.io/kubernetes, never by hand.
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION=${K8S_VERSION:-v1.37.2}
K8S_PREVIOUS_VERSION=${K8S_PREVIOUS_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
KUBEVIRT_VERSION=${KUBEVIRT_VERSION:-v1.8.1}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION:-v0.8.0}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
KINE_VERSION=${KINE_VERSION:-v0.17.5}
HELM_VERSION=${HELM_VERSION:-v4.3.2}
CLUSTER_API_VERSION=${CLUSTER_API_VERSION:-v1.14.2}

# k8s_module DIR VERSION: a module requiring k8s.io/kubernetes VERSION with its staging modules
# replaced by the published ones of the same release
k8s_module() {
  local dir=$1 version=$2 staging modfile required
  staging="v0.${version#v1.}"
  modfile=$(go mod download -json "k8s.io/kubernetes@${version}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  required=$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r{print $1}' "$modfile")
  (
    cd "$dir"
    {
      echo "module kvtenant.dev/testenv/$dir"
      echo
      echo "go 1.26.0"
      echo
      echo "require k8s.io/kubernetes ${version}"
      echo
      echo "replace ("
      grep -E '^\s+k8s\.io/[a-z0-9-]+ => \./staging/' "$modfile" | awk '{print $1}' | while read -r m; do
        if grep -qx "$m" <<<"$required"; then
          printf '\t%s => %s %s\n' "$m" "$m" "$staging"
        fi
      done
      echo ")"
    } > go.mod
    go mod tidy
  )
}
k8s_module kubernetes "$K8S_VERSION"
# the previous minor's apiserver and controller-manager, for upgrade tests
k8s_module kubernetes-previous "$K8S_PREVIOUS_VERSION"
(
  cd etcd
  printf 'module kvtenant.dev/testenv/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
  go mod tidy
)
(
  # KubeVirt's own replace directives do not apply when it is a dependency: repeat them, with its
  # staging modules (./staging/src/kubevirt.io/<name>) replaced by the published ones of the
  # same tag. The block comes from KubeVirt's real go.mod, never by hand.
  cd kubevirt
  kv_modfile=$(go mod download -json "kubevirt.io/kubevirt@${KUBEVIRT_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module kvtenant.dev/testenv/kubevirt"
    echo
    echo "go 1.26.0"
    echo
    echo "require ("
    printf '\tkubevirt.io/api %s\n\tkubevirt.io/client-go %s\n\tkubevirt.io/kubevirt %s\n' "$KUBEVIRT_VERSION" "$KUBEVIRT_VERSION" "$KUBEVIRT_VERSION"
    echo ")"
    echo
    echo "replace ("
    awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&NF>=3{print}' "$kv_modfile" | while read -r m _ target version; do
      if [[ "$target" == ./staging/src/* ]]; then
        printf '\t%s => %s %s\n' "$m" "$m" "$KUBEVIRT_VERSION"
      else
        printf '\t%s => %s %s\n' "$m" "$target" "$version"
      fi
    done
    echo ")"
  } > go.mod
  go mod tidy
)
(
  cd kwok
  printf 'module kvtenant.dev/testenv/kwok\n\ngo 1.26.0\n\nrequire sigs.k8s.io/kwok %s\n' "$KWOK_VERSION" > go.mod
  go mod tidy
)
(
  # a module of its own: with kwok's newer k8s.io modules it builds but exits at start
  cd metrics-server
  printf 'module kvtenant.dev/testenv/metrics-server\n\ngo 1.26.0\n\nrequire sigs.k8s.io/metrics-server %s\n' "$METRICS_SERVER_VERSION" > go.mod
  go mod tidy
)
(
  cd coredns
  printf 'module kvtenant.dev/testenv/coredns\n\ngo 1.26.0\n\nrequire github.com/coredns/coredns %s\n' "$COREDNS_VERSION" > go.mod
  go mod tidy
)
(
  cd kine
  printf 'module kvtenant.dev/testenv/kine\n\ngo 1.26.0\n\nrequire github.com/k3s-io/kine %s\n' "$KINE_VERSION" > go.mod
  go mod tidy
)
(
  cd helm
  printf 'module kvtenant.dev/testenv/helm\n\ngo 1.26.0\n\nrequire helm.sh/helm/v4 %s\n' "$HELM_VERSION" > go.mod
  go mod tidy
)
(
  # Cluster API replaces its api module with ./api, which a dependency does not see: require the
  # published sigs.k8s.io/cluster-api/api of the same tag (the versions in testenv/src/tools.rs)
  cd cluster-api
  printf 'module kvtenant.dev/testenv/cluster-api\n\ngo 1.26.0\n\nrequire (\n\tsigs.k8s.io/cluster-api %s\n\tsigs.k8s.io/cluster-api/api %s\n)\n' "$CLUSTER_API_VERSION" "$CLUSTER_API_VERSION" > go.mod
  go mod tidy
)
