//! `kvtenant release-artifacts --version vX.Y.Z --out DIR`: everything a release publishes, with
//! the version stamped, from one checkout:
//!
//! ```text
//! DIR/crds.yaml                                     kvtenant crds (version label)
//! DIR/chart/kvtenant/                               the Helm chart, deploy/base copied into files/base
//! DIR/control-plane-kvtenant/vX.Y.Z/                control-plane-components.yaml, metadata.yaml
//! DIR/infrastructure-kvtenant/vX.Y.Z/               infrastructure-components.yaml, metadata.yaml,
//!                                                   cluster-template.yaml, cluster-template-topology.yaml,
//!                                                   clusterclass-kvtenant.yaml
//! ```
//!
//! The two provider folders are laid out as a clusterctl provider repository
//! (`{provider}/{version}/`), so `clusterctl init` can use DIR through its config file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use kvtenant_capi::components::{self, Kind};

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The release, `vMAJOR.MINOR.PATCH` (the chart's version is the same without the `v`).
    #[arg(long)]
    pub version: String,
    /// Directory to write into (created; existing files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// The kvtenant checkout holding deploy/chart and deploy/base.
    #[arg(long, default_value = ".")]
    pub source: PathBuf,
}

/// Whether `version` is `vMAJOR.MINOR.PATCH` (what the chart, images and clusterctl expect).
pub fn check_version(version: &str) -> Result<(), String> {
    let parts: Vec<&str> = version
        .strip_prefix('v')
        .unwrap_or_default()
        .split('.')
        .collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        Ok(())
    } else {
        Err(format!(
            "--version {version:?} is not vMAJOR.MINOR.PATCH (e.g. v0.2.0)"
        ))
    }
}

/// Chart.yaml with `version` (without `v`) and `appVersion` set; every other line kept.
pub fn stamp_chart_yaml(text: &str, version: &str) -> Result<String, String> {
    let (mut saw_version, mut saw_app) = (false, false);
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("version:") {
            saw_version = true;
            out.push_str(&format!("version: {}\n", version.trim_start_matches('v')));
        } else if line.starts_with("appVersion:") {
            saw_app = true;
            out.push_str(&format!("appVersion: {version}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if saw_version && saw_app {
        Ok(out)
    } else {
        Err("deploy/chart/Chart.yaml lacks a top-level version: or appVersion: line".into())
    }
}

/// `kvtenant crds` with the release in an `app.kubernetes.io/version` label.
pub fn crds_yaml(version: &str) -> anyhow::Result<String> {
    let mut out = format!("# kvtenant {version}: the CustomResourceDefinitions of its API\n");
    for mut crd in kvtenant_api::crds() {
        crd.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("app.kubernetes.io/version".into(), version.into());
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// Every file below `dir` (links followed), as paths relative to it.
fn files_below(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        for entry in std::fs::read_dir(&here).with_context(|| format!("read {}", here.display()))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            if std::fs::metadata(entry.path())?.is_dir() {
                stack.push(rel);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

pub fn release_artifacts(args: ReleaseArgs) -> anyhow::Result<()> {
    check_version(&args.version).map_err(anyhow::Error::msg)?;
    let v = &args.version;
    let chart_src = args.source.join("deploy").join("chart");
    anyhow::ensure!(
        chart_src.join("Chart.yaml").is_file(),
        "{} has no Chart.yaml: run from a kvtenant checkout or pass --source",
        chart_src.display()
    );
    write(&args.out.join("crds.yaml"), &crds_yaml(v)?)?;

    let chart_out = args.out.join("chart").join("kvtenant");
    if chart_out.exists() {
        std::fs::remove_dir_all(&chart_out)
            .with_context(|| format!("remove {}", chart_out.display()))?;
    }
    for rel in files_below(&chart_src)? {
        let text = std::fs::read_to_string(chart_src.join(&rel))
            .with_context(|| format!("read {}", chart_src.join(&rel).display()))?;
        let text = if rel == Path::new("Chart.yaml") {
            stamp_chart_yaml(&text, v).map_err(anyhow::Error::msg)?
        } else {
            text
        };
        write(&chart_out.join(&rel), &text)?;
    }

    for kind in [Kind::ControlPlane, Kind::Infrastructure] {
        let dir = args.out.join(kind.provider()).join(v);
        write(
            &dir.join(kind.file_name()),
            &components::components(kind, v),
        )?;
        write(&dir.join("metadata.yaml"), &components::metadata(v))?;
        if kind == Kind::Infrastructure {
            write(
                &dir.join("cluster-template.yaml"),
                &components::cluster_template(),
            )?;
            write(
                &dir.join("cluster-template-topology.yaml"),
                &components::cluster_template_topology(),
            )?;
            write(
                &dir.join("clusterclass-kvtenant.yaml"),
                &components::cluster_class(),
            )?;
        }
    }
    println!("kvtenant {v} release artifacts in {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_v_major_minor_patch() {
        assert!(check_version("v0.2.0").is_ok());
        assert!(check_version("v10.20.30").is_ok());
        for bad in ["0.2.0", "v0.2", "v0.2.0-rc.1", "v0..1", "latest"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_chart_yaml_is_stamped_and_keeps_its_comments() {
        let text = "# c\napiVersion: v2\nversion: 0.1.0\nappVersion: v0.1.0\nkubeVersion: \">=1.30.0-0\"\n";
        let out = stamp_chart_yaml(text, "v0.4.2").unwrap();
        assert_eq!(
            out,
            "# c\napiVersion: v2\nversion: 0.4.2\nappVersion: v0.4.2\nkubeVersion: \">=1.30.0-0\"\n"
        );
        assert!(stamp_chart_yaml("apiVersion: v2\n", "v1.0.0").is_err());
    }

    #[test]
    fn crds_carry_the_release() {
        let text = crds_yaml("v0.4.2").unwrap();
        assert!(text.contains("app.kubernetes.io/version: v0.4.2"), "{text}");
        assert!(text.contains("name: virtualclusters.tenancy.kvtenant.io"));
    }
}
