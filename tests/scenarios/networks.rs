//! 15. Secondary networks (testenv only, see [`Target::multus`]): the host has Multus'
//!     NetworkAttachmentDefinition CRD (the scenario applies it with the host kubeconfig, as the
//!     platform admin installing Multus would) and `NetworkAttachmentDefinition` in syncKinds.
//!     The tenant's own network `e2e-net` (the bridge CNI on `br-e2e`, host-local IPAM) is
//!     refused naming `spec.vmPolicy.tenantNetworks` while nothing is allowed (the default),
//!     and reaches the host in `default`'s mapped namespace, config unchanged, once the scenario
//!     allows that CNI type and bridge there; one of a type not allowed (macvlan) is refused
//!     naming `spec.vmPolicy.tenantNetworks.allowedCniTypes` and never reaches the host. No
//!     Multus or CNI runs on testenv: nothing attaches a network (**simulated** by absence: only
//!     which definitions reach the host is exercised). kind: skipped, with the reason printed
//!     (`e2e-kind/up.sh` installs no Multus). The scenario puts `tenantNetworks` back and removes
//!     what it made in the tenant.

use super::*;

const NADS: &str = "network-attachment-definitions.k8s.cni.cncf.io";
const ALLOWED: &str = "e2e-net";
const OTHER_TYPE: &str = "e2e-macvlan";

fn network(name: &str, config: &Value) -> String {
    serde_json::json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"config": config.to_string()}})
    .to_string()
}

fn bridge_config() -> Value {
    serde_json::json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": "br-e2e",
        "ipam": {"type": "host-local", "subnet": "10.201.0.0/24"}})
}

impl Target {
    pub fn secondary_networks(&self) {
        let crd = match &self.multus {
            Ok(crd) => crd,
            Err(reason) => {
                eprintln!("SKIPPED scenario 15 (secondary networks): {reason}");
                return;
            }
        };
        kubectl(
            &self.host_kubeconfig,
            &["apply", "-f", crd.to_str().expect("a UTF-8 path")],
        )
        .unwrap_or_else(|e| panic!("the host's NetworkAttachmentDefinition CRD: {e}"));
        let before = self.virtual_cluster()["spec"]["vmPolicy"]["tenantNetworks"].clone();
        self.patch_vc_spec(&serde_json::json!({"vmPolicy": {"tenantNetworks": null}}));
        self.add_sync_kinds(&["NetworkAttachmentDefinition"]);
        self.tenant_crd(NADS);

        // nothing allowed yet: refused, the field named
        let apply_allowed = || {
            kubectl_input(
                &self.tenant_kubeconfig,
                &["apply", "-f", "-"],
                &network(ALLOWED, &bridge_config()),
            )
        };
        self.refused_naming(apply_allowed(), ALLOWED, "spec.vmPolicy.tenantNetworks");

        // allowed: on the host, in default's mapped namespace, as the tenant wrote it
        self.patch_vc_spec(&serde_json::json!({"vmPolicy": {"tenantNetworks": {
            "allowedCniTypes": ["bridge", "host-local"],
            "allowedBridges": ["br-e2e"]}}}));
        self.wait_result(
            "the tenant's apply of e2e-net accepted once allowed",
            apply_allowed,
        );
        let uid = self.tenant_uid(NADS, ALLOWED);
        let host_ns = self.wait("e2e-net on the host", || {
            self.host_namespace_of_a(NADS, &uid)
        });
        assert_ne!(host_ns, "default", "the host copy is in a mapped namespace");
        let copy = json(
            &self.host_kubeconfig,
            &["get", NADS, ALLOWED, "-n", &host_ns],
        )
        .expect("the host's e2e-net");
        assert_eq!(
            copy["spec"]["config"],
            bridge_config().to_string(),
            "{copy}"
        );

        // a CNI type not allowed: refused, the field named, never on the host
        let macvlan = serde_json::json!({"cniVersion": "0.3.1", "type": "macvlan",
            "master": "br-e2e"});
        self.refused_naming(
            kubectl_input(
                &self.tenant_kubeconfig,
                &["apply", "-f", "-"],
                &network(OTHER_TYPE, &macvlan),
            ),
            OTHER_TYPE,
            "spec.vmPolicy.tenantNetworks.allowedCniTypes",
        );
        assert!(
            json(
                &self.host_kubeconfig,
                &["get", NADS, OTHER_TYPE, "-n", &host_ns]
            )
            .is_none(),
            "the refused network never reaches the host"
        );

        for name in [ALLOWED, OTHER_TYPE] {
            let _ = kubectl(
                &self.tenant_kubeconfig,
                &[
                    "delete",
                    NADS,
                    name,
                    "-n",
                    "default",
                    "--ignore-not-found",
                    "--wait=false",
                ],
            );
        }
        self.wait("e2e-net gone from the host", || {
            json(
                &self.host_kubeconfig,
                &["get", NADS, ALLOWED, "-n", &host_ns],
            )
            .is_none()
            .then_some(())
        });
        self.patch_vc_spec(&serde_json::json!({"vmPolicy": {"tenantNetworks": before}}));
    }
}
