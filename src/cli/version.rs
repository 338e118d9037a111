//! `kvtenant version`: this binary's version and the controller's on the host.
//!
//! The controller's version is the tag of the image its Deployment runs (what runs, even when
//! an overlay replaced the release image), else the Deployment's `app.kubernetes.io/version`
//! label (set by the install manifests). The Deployment is found by its labels
//! `app.kubernetes.io/name=kvtenant,app.kubernetes.io/component=controller` in any namespace
//! (only in `kvtenant-system` when listing all namespaces is forbidden).

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::global::{self, GlobalArgs, Output};

/// This binary's version, as `version` prints it.
pub const CLIENT_VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
/// The labels of the controller's Deployment (deploy/base/controller.yaml).
pub const CONTROLLER_SELECTOR: &str =
    "app.kubernetes.io/name=kvtenant,app.kubernetes.io/component=controller";
/// Where the install puts it.
const INSTALL_NAMESPACE: &str = "kvtenant-system";
const VERSION_LABEL: &str = "app.kubernetes.io/version";

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Only this binary's version; do not contact the host cluster.
    #[arg(long)]
    pub client: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Serialize, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    pub client_version: String,
    /// `None` with `--client`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerInfo>,
}

#[derive(Serialize, Debug, Default, PartialEq, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ControllerInfo {
    /// False when the host has no controller Deployment.
    pub installed: bool,
    /// Why the controller's version is unknown: the host answered, but this user may not read
    /// Deployments where it looked (`installed` is then false: not seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub ready_replicas: i32,
    pub replicas: i32,
}

/// The tag of an image reference (`registry:5000/repo:tag@sha256:...` → `tag`); `None` when
/// it names no tag (a digest alone, or no tag: `latest` by default, which says nothing).
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':')
        .map(|(_, tag)| tag)
        .filter(|t| !t.is_empty())
}

/// What `version` says of a controller Deployment.
pub fn controller_info(d: &Deployment) -> ControllerInfo {
    let container = d.spec.template.spec.as_ref().and_then(|p| {
        p.containers
            .iter()
            .find(|c| c.name == "controller")
            .or(p.containers.first())
    });
    let image = container.and_then(|c| c.image.clone());
    let version = image
        .as_deref()
        .and_then(image_tag)
        .map(str::to_string)
        .or_else(|| d.labels().get(VERSION_LABEL).cloned());
    let status = d.status.as_ref();
    ControllerInfo {
        installed: true,
        unknown: None,
        version,
        deployment: Some(format!(
            "{}/{}",
            d.namespace().unwrap_or_default(),
            d.name_any()
        )),
        image,
        ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        replicas: d.spec.replicas.unwrap_or(1),
    }
}

/// The text `version` prints without `-o`.
pub fn text(v: &Versions) -> String {
    let mut out = format!("Client Version: {}\n", v.client_version);
    match &v.controller {
        None => {}
        Some(c) if c.unknown.is_some() => out.push_str(&format!(
            "Controller Version: unknown ({})\n",
            c.unknown.as_deref().unwrap_or_default()
        )),
        Some(c) if !c.installed => out.push_str(&format!(
            "Controller Version: not installed (no Deployment labelled {CONTROLLER_SELECTOR} on the host)\n"
        )),
        Some(c) => out.push_str(&format!(
            "Controller Version: {} ({}, image {}, {}/{} ready)\n",
            c.version.as_deref().unwrap_or("unknown"),
            c.deployment.as_deref().unwrap_or_default(),
            c.image.as_deref().unwrap_or("unknown"),
            c.ready_replicas,
            c.replicas
        )),
    }
    out
}

async fn find_controller(g: &GlobalArgs) -> anyhow::Result<ControllerInfo> {
    let client = g.host_client().await?;
    let lp = ListParams::default().labels(CONTROLLER_SELECTOR);
    let forbidden = |e: &kube::Error| {
        kvtenant_kubeutil::classify(e) == kvtenant_kubeutil::ApiErrorClass::Forbidden
    };
    let listed = match Api::<Deployment>::all(client.clone()).list(&lp).await {
        Err(e) if forbidden(&e) => {
            Api::<Deployment>::namespaced(client, INSTALL_NAMESPACE)
                .list(&lp)
                .await
        }
        r => r,
    };
    let listed = match listed {
        // the host answered: a user without read access to Deployments still gets an answer
        Err(e) if forbidden(&e) => {
            return Ok(ControllerInfo {
                unknown: Some(format!(
                    "not allowed to list Deployments in any namespace or in {INSTALL_NAMESPACE}"
                )),
                ..ControllerInfo::default()
            });
        }
        r => r.context("looking for the kvtenant controller's Deployment on the host")?,
    };
    Ok(listed
        .items
        .first()
        .map(controller_info)
        .unwrap_or_default())
}

/// `kvtenant version`. The client version is printed even when the host cannot be reached
/// (then the command fails, as `kubectl version` does).
pub async fn version(g: &GlobalArgs, args: VersionArgs) -> anyhow::Result<()> {
    let mut v = Versions {
        client_version: CLIENT_VERSION.into(),
        controller: None,
    };
    let found = if args.client {
        Ok(())
    } else {
        find_controller(g).await.map(|c| v.controller = Some(c))
    };
    match global::render(args.output, &v)? {
        Some(t) => print!("{t}"),
        None => print!("{}", text(&v)),
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn image_tags_skip_registry_ports_and_digests() {
        assert_eq!(
            image_tag("ghcr.io/kvtenant/kvtenant:v0.1.0"),
            Some("v0.1.0")
        );
        assert_eq!(image_tag("localhost:5000/kvtenant:dev"), Some("dev"));
        assert_eq!(image_tag("localhost:5000/kvtenant"), None);
        assert_eq!(image_tag("kvtenant:v1@sha256:abc"), Some("v1"));
        assert_eq!(image_tag("kvtenant@sha256:abc"), None);
    }

    fn deployment(image: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "kvtenant-controller", "namespace": "ops",
                "labels": {VERSION_LABEL: "v0.1.0"}},
            "spec": {"replicas": 2, "selector": {},
                "template": {"spec": {"containers": [
                    {"name": "sidecar", "image": "proxy:9"},
                    {"name": "controller", "image": image}]}}},
            "status": {"readyReplicas": 1}
        }))
        .unwrap()
    }

    #[test]
    fn the_controller_version_is_its_image_tag_else_the_version_label() {
        let c = controller_info(&deployment("ghcr.io/kvtenant/kvtenant:dev"));
        assert_eq!(c.version.as_deref(), Some("dev"));
        assert_eq!(c.deployment.as_deref(), Some("ops/kvtenant-controller"));
        assert_eq!((c.ready_replicas, c.replicas), (1, 2));
        let c = controller_info(&deployment("ghcr.io/kvtenant/kvtenant@sha256:abc"));
        assert_eq!(c.version.as_deref(), Some("v0.1.0"));
    }

    #[test]
    fn text_names_both_versions_or_says_what_is_missing() {
        let mut v = Versions {
            client_version: "v1".into(),
            controller: None,
        };
        assert_eq!(text(&v), "Client Version: v1\n");
        v.controller = Some(ControllerInfo::default());
        assert!(text(&v).contains("Controller Version: not installed"));
        v.controller = Some(ControllerInfo {
            unknown: Some("not allowed".into()),
            ..ControllerInfo::default()
        });
        assert!(text(&v).ends_with("Controller Version: unknown (not allowed)\n"));
        v.controller = Some(controller_info(&deployment("k:v2")));
        assert!(
            text(&v).ends_with(
                "Controller Version: v2 (ops/kvtenant-controller, image k:v2, 1/2 ready)\n"
            ),
            "{}",
            text(&v)
        );
    }
}
