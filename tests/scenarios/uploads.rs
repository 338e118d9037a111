//! 8. Disk upload: the scenario adds `DataVolume` to the virtual cluster's syncKinds on the
//!    host; the tenant runs `virtctl image-upload dv upload-dv --insecure` (no
//!    `--uploadproxy-url`: virtctl reads kvtenant's upload route from the tenant's CDIConfig),
//!    the DataVolume is Succeeded in the tenant and lives on the host in the mapped namespace.
//!    testenv: CDI's upload side is **simulated** (the bytes kept in memory); kind: real CDI
//!    (its upload server writes the claim, which scenario 9 exports and downloads).

use super::*;

/// The DataVolume (and claim) the image goes into.
pub const UPLOAD_DV: &str = "upload-dv";

/// The uploaded image: a raw disk of 64 KiB (whole sectors), a line of text then zeros.
pub fn image() -> Vec<u8> {
    let mut image = b"kvtenant e2e: a raw disk uploaded into a virtual cluster\n".to_vec();
    image.resize(64 * 1024, 0);
    image
}

impl Target {
    pub fn upload(&self) {
        const DV: &str = "datavolumes.cdi.kubevirt.io";
        self.add_sync_kinds(&["DataVolume"]);
        self.tenant_crd(DV);
        // kvtenant registers CDI's upload API in the tenant while the host serves it, and keeps
        // the tenant's CDIConfig naming its upload route
        self.wait_result("upload.cdi.kubevirt.io served in the tenant", || {
            kubectl(
                &self.tenant_kubeconfig,
                &["get", "--raw", "/apis/upload.cdi.kubevirt.io/v1beta1"],
            )
        });
        self.wait_result("the tenant's CDIConfig naming an upload route", || {
            let c = json_result(&self.tenant_kubeconfig, &["get", "cdiconfig", "config"])?;
            c["spec"]["uploadProxyURLOverride"]
                .as_str()
                .filter(|u| u.starts_with("https://"))
                .map(|_| ())
                .ok_or_else(|| format!("spec {}", c["spec"]))
        });

        let file =
            std::env::temp_dir().join(format!("kvtenant-e2e-upload-{}.img", std::process::id()));
        std::fs::write(&file, image()).expect("writing the image");
        let out = self.virtctl(&[
            "image-upload",
            "dv",
            UPLOAD_DV,
            "--size=64Mi",
            "--image-path",
            file.to_str().expect("a UTF-8 path"),
            "--insecure",
            "-n",
            "default",
        ]);
        let _ = std::fs::remove_file(&file);
        let out = out.unwrap_or_else(|e| panic!("virtctl image-upload: {e}"));
        assert!(
            out.contains("completed successfully"),
            "virtctl image-upload: {out}"
        );

        let dv = self.wait_result("the tenant's DataVolume Succeeded", || {
            let dv = json_result(
                &self.tenant_kubeconfig,
                &["get", DV, UPLOAD_DV, "-n", "default"],
            )?;
            (dv["status"]["phase"] == "Succeeded")
                .then(|| dv.clone())
                .ok_or_else(|| format!("status {}", dv["status"]))
        });
        let uid = dv["metadata"]["uid"].as_str().expect("a uid").to_string();
        let host_ns = self.wait("the DataVolume on the host", || {
            self.host_namespace_of_a(DV, &uid)
        });
        assert_ne!(
            host_ns, "default",
            "the host copy must be in a mapped namespace"
        );
        self.wait_result("the host's DataVolume Succeeded", || {
            let dv = json_result(
                &self.host_kubeconfig,
                &["get", DV, UPLOAD_DV, "-n", &host_ns],
            )?;
            (dv["status"]["phase"] == "Succeeded")
                .then_some(())
                .ok_or_else(|| format!("status {}", dv["status"]))
        });
    }
}
