//! 9. Export and download (after 8: it exports the uploaded claim; the host's KubeVirt needs
//!    its VMExport feature gate: `kvtenant dev` and `e2e-kind/up.sh` turn it on): the scenario
//!    adds `VirtualMachineExport` to the virtual cluster's syncKinds on the host; the tenant
//!    runs `virtctl vmexport create --pvc=upload-dv`, the export is Ready in the tenant with
//!    links naming the tenant's namespace and its exporter pod shown there, and
//!    `virtctl vmexport download --port-forward` writes the uploaded image (port-forwarded
//!    through the tenant apiserver, kvtenant's kubelet proxy and the host apiserver to the
//!    exporter pod); `virtctl vmexport delete` ends it on the host. testenv: the exporter pod
//!    runs on a kwok node, so the scenario answers its port-forward as virt-exportserver would
//!    (**simulated**, serving the image scenario 8 uploaded); kind: the real exporter serves the
//!    claim CDI wrote (the image, then zeros to the volume's size).

use super::uploads::{UPLOAD_DV, image};
use super::*;

const EXPORT: &str = "upload-export";

impl Target {
    pub fn export_download(&self) {
        const EXPORTS: &str = "virtualmachineexports.export.kubevirt.io";
        self.add_sync_kinds(&["VirtualMachineExport"]);
        self.tenant_crd(EXPORTS);
        // the claim is the host CDI's, shown in the tenant: its namespace is the DataVolume's
        let dv_uid = self.tenant_uid("datavolumes.cdi.kubevirt.io", UPLOAD_DV);
        let host_ns = self.wait("the uploaded DataVolume on the host", || {
            self.host_namespace_of_a("datavolumes.cdi.kubevirt.io", &dv_uid)
        });
        self.virtctl(&[
            "vmexport",
            "create",
            EXPORT,
            &format!("--pvc={UPLOAD_DV}"),
            "-n",
            "default",
        ])
        .unwrap_or_else(|e| panic!("virtctl vmexport create: {e}"));

        let export = self.wait_result("the export Ready in the tenant", || {
            let e = json_result(
                &self.tenant_kubeconfig,
                &["get", EXPORTS, EXPORT, "-n", "default"],
            )?;
            (e["status"]["phase"] == "Ready")
                .then(|| e.clone())
                .ok_or_else(|| format!("status {}", e["status"]))
        });
        let internal = export["status"]["links"]["internal"].to_string();
        assert!(
            internal.contains(&format!("virt-export-{EXPORT}.default.svc"))
                && !internal.contains(&host_ns),
            "the internal links name the tenant's namespace, never the host's: {internal}"
        );
        // the exporter pod, shown read-only in the tenant (the port-forward goes to it)
        self.wait("the exporter pod in the tenant", || {
            let pod = json(
                &self.tenant_kubeconfig,
                &[
                    "get",
                    "pod",
                    &format!("virt-export-{EXPORT}"),
                    "-n",
                    "default",
                ],
            )?;
            pod["metadata"]["annotations"]["tenancy.kvtenant.io/mirror-of-uid"]
                .is_string()
                .then_some(())
        });

        let secret = export["status"]["tokenSecretRef"]
            .as_str()
            .expect("the export names its token Secret")
            .to_string();
        let token = self.tenant(&[
            "get",
            "secret",
            &secret,
            "-n",
            "default",
            "-o",
            "jsonpath={.data.token}",
        ]);
        // testenv: the stand-in exporter, on a runtime of its own while virtctl runs
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let exporter = self.simulated_exporter_port.map(|port| {
            let token = decode_base64(&token);
            rt.block_on(testenv::kubevirt::exporter::SimulatedExporter::start(
                port,
                token,
                image(),
            ))
            .unwrap_or_else(|e| panic!("the simulated exporter on port {port}: {e}"))
        });

        let file =
            std::env::temp_dir().join(format!("kvtenant-e2e-export-{}.img", std::process::id()));
        let out = self.virtctl(&[
            "vmexport",
            "download",
            EXPORT,
            "-n",
            "default",
            "--port-forward",
            "--insecure",
            &format!("--volume={UPLOAD_DV}"),
            "--format=raw",
            &format!("--output={}", file.display()),
        ]);
        let downloaded = std::fs::read(&file);
        let _ = std::fs::remove_file(&file);
        out.unwrap_or_else(|e| panic!("virtctl vmexport download: {e}"));
        let downloaded = downloaded.expect("the downloaded disk");
        let image = image();
        assert!(
            downloaded.len() >= image.len() && downloaded.starts_with(&image),
            "the download starts with the uploaded image ({} bytes downloaded)",
            downloaded.len()
        );
        // a real CDI grows the raw image to the volume's size with zeros
        assert!(
            downloaded[image.len()..].iter().all(|b| *b == 0),
            "after the image, only zeros"
        );
        if let Some(exporter) = exporter {
            let asked = exporter.asked();
            assert!(
                asked
                    .iter()
                    .any(|p| p.ends_with(&format!("/volumes/{UPLOAD_DV}/disk.img.gz"))),
                "the port-forward reached the (simulated) exporter: {asked:?}"
            );
        }

        self.virtctl(&["vmexport", "delete", EXPORT, "-n", "default"])
            .unwrap_or_else(|e| panic!("virtctl vmexport delete: {e}"));
        self.wait("the export gone from the host", || {
            kubectl(
                &self.host_kubeconfig,
                &["get", EXPORTS, "-n", &host_ns, "-o", "name"],
            )
            .ok()
            .filter(|out| !out.contains(EXPORT))
        });
    }
}

/// A Secret's `data` value as text.
fn decode_base64(data: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .expect("the token Secret's data is base64");
    String::from_utf8(bytes).expect("a text token")
}
