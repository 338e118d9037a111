//! Every version testenv builds, in one place. The Go module files under `testenv/go/` pin the
//! same versions (regenerate them with `testenv/go/update-go-mod.sh`); a unit test checks that
//! the two agree.

/// Kubernetes release kube-apiserver, kube-controller-manager and kube-scheduler are built from.
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// etcd release.
pub const ETCD_VERSION: &str = "v3.7.3";
/// KubeVirt release virt-api, virt-controller, virtctl and the install strategy come from
/// (v1.9.0 does not build from the module proxy; see `shared/notes/real-kubevirt.md`).
pub const KUBEVIRT_VERSION: &str = "v1.8.1";
/// kwok release (simulated nodes and pods).
pub const KWOK_VERSION: &str = "v0.8.0";
/// metrics-server release (the host's `metrics.k8s.io` in tests, scraping kwok's simulated
/// kubelet resource metrics), with the k8s.io modules it was released with.
pub const METRICS_SERVER_VERSION: &str = "v0.8.0";
/// CoreDNS release (a tenant's DNS server; tests run it locally against a tenant apiserver).
pub const COREDNS_VERSION: &str = "v1.14.7";
/// kine release (the etcd shim of Managed virtual clusters with datastore Kine; the
/// control-plane runner runs it).
pub const KINE_VERSION: &str = "v0.17.5";
/// The previous minor's kube-apiserver and kube-controller-manager, for upgrade tests (a Managed
/// control plane created at this version, then upgraded to [`KUBERNETES_VERSION`]).
pub const KUBERNETES_PREVIOUS_VERSION: &str = "v1.36.3";

/// The Go module files testenv embeds, by directory under `testenv/go/`.
pub(crate) mod gomod {
    pub const K8S_GO_MOD: &str = include_str!("../go/kubernetes/go.mod");
    pub const K8S_GO_SUM: &str = include_str!("../go/kubernetes/go.sum");
    pub const K8S_TOOLS: &str = include_str!("../go/kubernetes/tools.go");
    pub const ETCD_GO_MOD: &str = include_str!("../go/etcd/go.mod");
    pub const ETCD_GO_SUM: &str = include_str!("../go/etcd/go.sum");
    pub const ETCD_TOOLS: &str = include_str!("../go/etcd/tools.go");
    pub const KUBEVIRT_GO_MOD: &str = include_str!("../go/kubevirt/go.mod");
    pub const KUBEVIRT_GO_SUM: &str = include_str!("../go/kubevirt/go.sum");
    pub const KUBEVIRT_TOOLS: &str = include_str!("../go/kubevirt/tools.go");
    pub const KUBEVIRT_INSTALL_STRATEGY: &str =
        include_str!("../go/kubevirt/cmd/kubevirt-install-strategy/main.go");
    pub const KWOK_GO_MOD: &str = include_str!("../go/kwok/go.mod");
    pub const KWOK_GO_SUM: &str = include_str!("../go/kwok/go.sum");
    pub const KWOK_TOOLS: &str = include_str!("../go/kwok/tools.go");
    pub const KWOK_STAGES: &str = include_str!("../go/kwok/cmd/kwok-stages/main.go");
    pub const METRICS_SERVER_GO_MOD: &str = include_str!("../go/metrics-server/go.mod");
    pub const METRICS_SERVER_GO_SUM: &str = include_str!("../go/metrics-server/go.sum");
    pub const METRICS_SERVER_TOOLS: &str = include_str!("../go/metrics-server/tools.go");
    pub const COREDNS_GO_MOD: &str = include_str!("../go/coredns/go.mod");
    pub const COREDNS_GO_SUM: &str = include_str!("../go/coredns/go.sum");
    pub const COREDNS_TOOLS: &str = include_str!("../go/coredns/tools.go");
    pub const KINE_GO_MOD: &str = include_str!("../go/kine/go.mod");
    pub const KINE_GO_SUM: &str = include_str!("../go/kine/go.sum");
    pub const KINE_TOOLS: &str = include_str!("../go/kine/tools.go");
    pub const K8S_PREVIOUS_GO_MOD: &str = include_str!("../go/kubernetes-previous/go.mod");
    pub const K8S_PREVIOUS_GO_SUM: &str = include_str!("../go/kubernetes-previous/go.sum");
    pub const K8S_PREVIOUS_TOOLS: &str = include_str!("../go/kubernetes-previous/tools.go");
}

/// The version a go.mod `require`s (or replaces) `module` with, if any.
pub fn required_version<'a>(go_mod: &'a str, module: &str) -> Option<&'a str> {
    go_mod.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("require ").unwrap_or(line);
        let mut parts = line.split_whitespace();
        (parts.next() == Some(module))
            .then(|| parts.next())
            .flatten()
            .filter(|v| v.starts_with('v'))
    })
}

#[cfg(test)]
mod tests {
    use super::gomod::*;
    use super::*;

    #[test]
    fn go_modules_pin_the_versions_declared_here() {
        assert_eq!(
            required_version(K8S_GO_MOD, "k8s.io/kubernetes"),
            Some(KUBERNETES_VERSION)
        );
        assert_eq!(
            required_version(ETCD_GO_MOD, "go.etcd.io/etcd/server/v3"),
            Some(ETCD_VERSION)
        );
        assert_eq!(
            required_version(KUBEVIRT_GO_MOD, "kubevirt.io/kubevirt"),
            Some(KUBEVIRT_VERSION)
        );
        assert_eq!(
            required_version(KWOK_GO_MOD, "sigs.k8s.io/kwok"),
            Some(KWOK_VERSION)
        );
        assert_eq!(
            required_version(METRICS_SERVER_GO_MOD, "sigs.k8s.io/metrics-server"),
            Some(METRICS_SERVER_VERSION)
        );
        assert_eq!(
            required_version(COREDNS_GO_MOD, "github.com/coredns/coredns"),
            Some(COREDNS_VERSION)
        );
        assert_eq!(
            required_version(KINE_GO_MOD, "github.com/k3s-io/kine"),
            Some(KINE_VERSION)
        );
        assert_eq!(
            required_version(K8S_PREVIOUS_GO_MOD, "k8s.io/kubernetes"),
            Some(KUBERNETES_PREVIOUS_VERSION)
        );
    }

    #[test]
    fn the_previous_version_is_the_minor_before() {
        let minor = |v: &str| -> u32 { v.split('.').nth(1).unwrap().parse().unwrap() };
        assert_eq!(
            minor(KUBERNETES_PREVIOUS_VERSION) + 1,
            minor(KUBERNETES_VERSION)
        );
    }

    #[test]
    fn kubevirt_module_repeats_kubevirts_staging_replaces() {
        // KubeVirt's own replace block does not apply to a dependency; ours must pin its staging
        // modules to the same tag, or Go picks whatever the graph wants.
        for m in ["kubevirt.io/api", "kubevirt.io/client-go"] {
            let line = format!("{m} => {m} {KUBEVIRT_VERSION}");
            assert!(KUBEVIRT_GO_MOD.contains(&line), "go.mod lacks `{line}`");
        }
    }

    #[test]
    fn required_version_reads_single_and_block_requires() {
        let m = "module x\n\nrequire a.b/c v1.2.3\n\nrequire (\n\td.e/f v0.1.0 // indirect\n)\n";
        assert_eq!(required_version(m, "a.b/c"), Some("v1.2.3"));
        assert_eq!(required_version(m, "d.e/f"), Some("v0.1.0"));
        assert_eq!(required_version(m, "d.e"), None);
    }
}
