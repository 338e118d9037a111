//! 13. Golden images: the host offers CDI DataSources `e2e-images/e2e-golden` and
//!     `e2e-images/e2e-other` (the scenario makes them with the host kubeconfig, as the platform
//!     admin would), both pointing at the claim of a blank DataVolume `e2e-images/e2e-golden`, with
//!     the clone right a host with golden images grants every service account (a RoleBinding on
//!     `datavolumes/source` in `e2e-images`: the host's CDI and KubeVirt check it before they
//!     clone); the VirtualCluster allows `e2e-golden` only (`spec.vmPolicy.allowedDataSources`).
//!     The tenant lists exactly that one with `kubectl get datasources -n e2e-images`, creates a
//!     DataVolume with `sourceRef` to it, which reaches the host naming the host's DataSource and
//!     is `Succeeded` in the tenant; a DataVolume naming `e2e-other` is refused naming the field
//!     and never reaches the host. testenv: CDI is **simulated** (the clone is reported done once
//!     the DataSource exists, nothing copied); kind: real CDI clones the claim. The scenario puts
//!     the VirtualCluster's policy back as it was and removes what it made.

use super::*;

const DV: &str = "datavolumes.cdi.kubevirt.io";
const DATA_SOURCES: &str = "datasources.cdi.kubevirt.io";
/// The host namespace of the golden images.
const IMAGES: &str = "e2e-images";
const GOLDEN: &str = "e2e-golden";
const OTHER: &str = "e2e-other";
const SIZE: &str = "128Mi";

/// What the scenario makes on the host: the namespace, the golden image's DataVolume (blank: a
/// claim CDI fills, real on kind, simulated on testenv), the two DataSources pointing at its
/// claim, and the clone right for every service account.
fn host_objects() -> String {
    let data_source = |name: &str| {
        serde_json::json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
            "metadata": {"name": name, "namespace": IMAGES},
            "spec": {"source": {"pvc": {"namespace": IMAGES, "name": GOLDEN}}}})
    };
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": IMAGES}},
        {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
         "metadata": {"name": GOLDEN, "namespace": IMAGES, "annotations": bind_now()},
         "spec": {"source": {"blank": {}},
            "storage": {"resources": {"requests": {"storage": SIZE}}}}},
        data_source(GOLDEN),
        data_source(OTHER),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "e2e-images-clone"},
         "rules": [{"apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes/source"],
                    "verbs": ["create"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "e2e-images-clone", "namespace": IMAGES},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "e2e-images-clone"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                       "name": "system:serviceaccounts"}]}]})
    .to_string()
}

/// CDI's request to bind a DataVolume's claim now rather than wait for a first consumer (kind's
/// storage class binds on first consumer; no VM uses these disks). The simulated CDI ignores it.
fn bind_now() -> Value {
    serde_json::json!({"cdi.kubevirt.io/storage.bind.immediate.requested": "true"})
}

fn source_ref(name: &str) -> Value {
    serde_json::json!({"kind": "DataSource", "namespace": IMAGES, "name": name})
}

/// A tenant DataVolume cloned from the DataSource `source`.
fn data_volume(name: &str, source: &str) -> String {
    serde_json::json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": "default", "annotations": bind_now()},
        "spec": {"sourceRef": source_ref(source),
            "storage": {"resources": {"requests": {"storage": SIZE}}}}})
    .to_string()
}

impl Target {
    pub fn golden_images(&self) {
        kubectl_input(
            &self.host_kubeconfig,
            &["apply", "-f", "-"],
            &host_objects(),
        )
        .unwrap_or_else(|e| panic!("the host's golden images: {e}"));
        let before = self.virtual_cluster()["spec"]["vmPolicy"]["allowedDataSources"].clone();
        self.add_sync_kinds(&["DataVolume"]);
        self.patch_vc_spec(&serde_json::json!({"vmPolicy": {
            "allowedDataSources": [format!("{IMAGES}/{GOLDEN}")]}}));
        self.tenant_crd(DATA_SOURCES);
        self.tenant_crd(DV);

        // the tenant lists what it may clone, nothing else
        self.wait_result("only e2e-golden listed in the tenant", || {
            let out = kubectl(
                &self.tenant_kubeconfig,
                &["get", "datasources", "-n", IMAGES, "-o", "name"],
            )?;
            let names: Vec<&str> = out.lines().collect();
            (names == [format!("datasource.cdi.kubevirt.io/{GOLDEN}")])
                .then_some(())
                .ok_or(out)
        });

        // a DataVolume cloned from it: on the host it names the host's DataSource
        kubectl_input(
            &self.tenant_kubeconfig,
            &["apply", "-f", "-"],
            &data_volume("golden-disk", GOLDEN),
        )
        .unwrap_or_else(|e| panic!("the DataVolume golden-disk: {e}"));
        let uid = self.tenant_uid(DV, "golden-disk");
        let host_ns = self.wait("golden-disk on the host", || {
            self.host_namespace_of_a(DV, &uid)
        });
        assert_ne!(host_ns, "default", "the host copy is in a mapped namespace");
        let copy = json(
            &self.host_kubeconfig,
            &["get", DV, "golden-disk", "-n", &host_ns],
        )
        .expect("the host's golden-disk");
        assert_eq!(copy["spec"]["sourceRef"], source_ref(GOLDEN), "{copy}");
        self.wait_result("golden-disk Succeeded in the tenant", || {
            let dv = json_result(
                &self.tenant_kubeconfig,
                &["get", DV, "golden-disk", "-n", "default"],
            )?;
            (dv["status"]["phase"] == "Succeeded")
                .then_some(())
                .ok_or_else(|| format!("status {}", dv["status"]))
        });

        // a DataSource the tenant may not use: refused, the field named
        self.refused_naming(
            kubectl_input(
                &self.tenant_kubeconfig,
                &["apply", "-f", "-"],
                &data_volume("stolen-disk", OTHER),
            ),
            "stolen-disk",
            "spec.vmPolicy.allowedDataSources",
        );
        assert!(
            json(
                &self.host_kubeconfig,
                &["get", DV, "stolen-disk", "-n", &host_ns]
            )
            .is_none(),
            "the refused DataVolume never reaches the host"
        );
        assert!(
            json(
                &self.tenant_kubeconfig,
                &["get", "datasources", OTHER, "-n", IMAGES]
            )
            .is_none(),
            "the DataSource not allowed is not shown in the tenant"
        );

        for dv in ["golden-disk", "stolen-disk"] {
            let _ = kubectl(
                &self.tenant_kubeconfig,
                &[
                    "delete",
                    DV,
                    dv,
                    "-n",
                    "default",
                    "--ignore-not-found",
                    "--wait=false",
                ],
            );
        }
        self.patch_vc_spec(&serde_json::json!({"vmPolicy": {"allowedDataSources": before}}));
        self.wait("golden-disk gone from the host", || {
            json(
                &self.host_kubeconfig,
                &["get", DV, "golden-disk", "-n", &host_ns],
            )
            .is_none()
            .then_some(())
        });
        let _ = kubectl_input(
            &self.host_kubeconfig,
            &["delete", "-f", "-", "--ignore-not-found", "--wait=false"],
            &host_objects(),
        );
    }
}
