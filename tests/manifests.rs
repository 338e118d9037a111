//! The install and demo material checked for real: `deploy/` (kustomize base and kind overlay),
//! `samples/`, the `Dockerfile` and the `e2e-kind/` scripts.
//!
//! Without a control plane: the CRD copy in `deploy/` equals `kvtenant crds`; the rendered
//! Deployments are hardened and only pass flags the binary has; every sample says where and how
//! to apply it; shellcheck passes on `e2e-kind/*.sh`.
//!
//! On a real kube-apiserver (testenv) running KubeVirt's real control plane (no VM boots): server-side dry-runs
//! of `deploy/base`, `deploy/overlays/kind` and every sample; the RBAC of each component checked
//! with SubjectAccessReviews; the admission policies checked with the components' own
//! ServiceAccount tokens; and the real `kvtenant syncer`, running with the syncer's
//! ServiceAccount token and RBAC, syncing the cloud-init sample VM of an External VirtualCluster
//! made from `samples/virtualcluster-external.yaml`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "manifests/components.rs"]
mod components;
#[path = "manifests/deploy.rs"]
mod deploy;
#[path = "manifests/packaging.rs"]
mod packaging;
#[path = "manifests/policies.rs"]
mod policies;
#[path = "manifests/rbac.rs"]
mod rbac;
#[path = "manifests/support.rs"]
mod support;
#[path = "manifests/testenv.rs"]
mod testenv;

// The tests, by topic; each runs its namesake in the module named.

// ---------------------------------------------------------------------------------------------
// checks without a control plane: deploy/ ([`deploy`])

#[test]
fn deploy_crd_copy_equals_kvtenant_crds() {
    deploy::deploy_crd_copy_equals_kvtenant_crds();
}

#[test]
fn rendered_deploy_is_hardened_and_matches_the_binary() {
    deploy::rendered_deploy_is_hardened_and_matches_the_binary();
}

#[test]
fn grafana_dashboard_queries_exported_metrics() {
    deploy::grafana_dashboard_queries_exported_metrics();
}

// ---------------------------------------------------------------------------------------------
// checks without a control plane: samples/, e2e-kind/, the image ([`packaging`])

#[test]
fn every_sample_is_tested_and_says_where_to_apply_it() {
    packaging::every_sample_is_tested_and_says_where_to_apply_it();
}

#[test]
fn e2e_kind_scripts_are_strict_and_pass_shellcheck() {
    packaging::e2e_kind_scripts_are_strict_and_pass_shellcheck();
}

#[test]
fn dockerfile_builds_the_locked_binary_and_runs_as_nonroot() {
    packaging::dockerfile_builds_the_locked_binary_and_runs_as_nonroot();
}

#[test]
fn the_image_binary_links_no_testenv() {
    packaging::the_image_binary_links_no_testenv();
}

// ---------------------------------------------------------------------------------------------
// on a real control plane ([`testenv`])

#[tokio::test(flavor = "multi_thread")]
async fn deploy_and_samples_on_testenv() {
    testenv::deploy_and_samples_on_testenv().await;
}
