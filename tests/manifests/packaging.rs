//! The rest of the install and demo material, checked without a control plane: every sample
//! is listed in [`SAMPLES`] and says where to apply it, the `e2e-kind/` scripts are strict and
//! pass shellcheck, and the `Dockerfile` builds the locked binary, without testenv, to run as
//! nonroot.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::support::*;

pub fn every_sample_is_tested_and_says_where_to_apply_it() {
    let listed: BTreeSet<&str> = SAMPLES.iter().map(|s| s.0).collect();
    for file in sample_files() {
        assert!(
            listed.contains(file.as_str()),
            "samples/{file} is not in SAMPLES of tests/manifests/support.rs, so nothing validates it"
        );
        let content = read_sample(&file);
        assert!(!yaml_docs(&content).is_empty(), "samples/{file} is empty");
        let header: String = content
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .to_lowercase();
        assert!(
            header.contains("kubectl") && (header.contains("host") || header.contains("tenant")),
            "samples/{file} must start with a comment saying where (host or tenant) and with \
             which kubectl command to apply it"
        );
    }
    for (file, _, _) in SAMPLES {
        assert!(
            root().join("samples").join(file).is_file(),
            "samples/{file} is listed but missing"
        );
    }
}

pub fn e2e_kind_scripts_are_strict_and_pass_shellcheck() {
    use std::os::unix::fs::PermissionsExt;
    let dir = root().join("e2e-kind");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    let names: Vec<String> = scripts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for needed in ["up.sh", "test.sh", "down.sh"] {
        assert!(
            names.iter().any(|n| n == needed),
            "e2e-kind/{needed} missing"
        );
    }
    for (path, name) in scripts.iter().zip(&names) {
        let content = std::fs::read_to_string(path).unwrap();
        assert!(
            content.starts_with("#!/usr/bin/env bash\n"),
            "{name}: shebang"
        );
        assert!(
            content.contains("\nset -euo pipefail\n"),
            "{name}: needs `set -euo pipefail`"
        );
        if name != "lib.sh" {
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert!(mode & 0o111 != 0, "{name} is not executable");
        }
    }
    // versions are pinned, not floating
    let lib = std::fs::read_to_string(dir.join("lib.sh")).unwrap();
    for var in [
        "KUBEVIRT_VERSION=\"v1.",
        "CDI_VERSION=\"v1.",
        "KIND_NODE_IMAGE=\"kindest/node:v",
    ] {
        assert!(lib.contains(var), "e2e-kind/lib.sh must pin {var}...");
    }
    assert!(
        !lib.contains("latest"),
        "e2e-kind/lib.sh must not float on `latest`"
    );

    let Ok(version) = std::process::Command::new("shellcheck")
        .arg("--version")
        .output()
    else {
        println!(
            "NOTE: shellcheck is not installed; e2e-kind/*.sh not linted \
             (apt-get install -y shellcheck)"
        );
        return;
    };
    assert!(version.status.success());
    let out = std::process::Command::new("shellcheck")
        .arg("-x")
        .args(&scripts)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        describe("shellcheck -x e2e-kind/*.sh", &out)
    );
}

pub fn dockerfile_builds_the_locked_binary_and_runs_as_nonroot() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let from: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage: {from:?}");
    // the builder's Rust is the one rust-toolchain.toml pins
    let toolchain = std::fs::read_to_string(root().join("rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        from[0].starts_with(&format!("FROM rust:{channel}")),
        "{} vs rust-toolchain.toml {channel}",
        from[0]
    );
    assert!(from[1].contains("distroless") && from[1].contains("nonroot"));
    // the image is built without `kvtenant dev` (the `dev` feature links testenv)
    assert!(
        dockerfile.contains("cargo build --release --locked --no-default-features --bin kvtenant")
    );
    assert!(dockerfile.contains("\nUSER nonroot\n"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/kvtenant\"]"));
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for entry in ["target/", ".git/"] {
        assert!(ignore.lines().any(|l| l == entry), ".dockerignore: {entry}");
    }
    // the build context must keep what the build reads (include_str! in testenv)
    assert!(!ignore.lines().any(|l| l.starts_with("testenv")));
}

/// The binary the image builds (no default features) links neither testenv nor its simulator.
pub fn the_image_binary_links_no_testenv() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |extra: &[&str]| {
        let out = std::process::Command::new(&cargo)
            .args(["tree", "--offline", "-p", "kvtenant", "--prefix", "none"])
            .args(extra)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe("cargo tree", &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let image = tree(&["--no-default-features"]);
    assert!(
        image
            .lines()
            .any(|l| l.starts_with("kvtenant-kubevirt-sync ")),
        "{image}"
    );
    assert!(!image.lines().any(|l| l.starts_with("testenv ")), "{image}");
    // the default build (for `kvtenant dev`) does link it: the check above can fail
    assert!(tree(&[]).lines().any(|l| l.starts_with("testenv ")));
}
