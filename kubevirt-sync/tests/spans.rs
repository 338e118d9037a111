//! The syncer's `sync` span: one per reconcile, naming the tenant and the object, with the
//! host write made for it (the kube client's request span) inside it. Real apiservers, real
//! KubeVirt control plane on the host (no VM boots).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// A span as opened: name, fields, and the name and fields of its parent.
#[derive(Clone, Debug, Default)]
struct Opened {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<(&'static str, BTreeMap<String, String>)>,
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// Records every span opened (its fields kept in the span's extensions for its children).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Opened>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let span = ctx.span(id).unwrap();
        let parent = span.parent().map(|p| {
            let f = p.extensions().get::<BTreeMap<String, String>>().cloned();
            (p.name(), f.unwrap_or_default())
        });
        span.extensions_mut().insert(fields.0.clone());
        self.0.lock().unwrap().push(Opened {
            name: attrs.metadata().name(),
            fields: fields.0,
            parent,
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_span_names_tenant_and_object_and_holds_the_host_write() {
    let recorder = Recorder::default();
    // every span, the kube client's (debug) included
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(recorder.clone()))
        .unwrap();
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let sample = repo_root().join("samples/vm-cloudinit.yaml");
    kubectl(t.kubeconfig(), &["apply", "-f", sample.to_str().unwrap()]);
    let host_ns = t.host_ns("default");
    let host_vms = env.host_api(&vm_resource(), &host_ns);
    wait_for("the VM on the host", Duration::from_secs(120), || {
        let api = host_vms.clone();
        async move { get(&api, "vm1").await }
    })
    .await;

    let opened = recorder.0.lock().unwrap().clone();
    let is_vm1 = |f: &BTreeMap<String, String>| {
        f.get("kind").map(String::as_str) == Some("VirtualMachine")
            && f.get("namespace").map(String::as_str) == Some("default")
            && f.get("name").map(String::as_str) == Some("vm1")
    };
    let syncs: Vec<&Opened> = opened
        .iter()
        .filter(|o| o.name == "sync" && is_vm1(&o.fields))
        .collect();
    assert!(!syncs.is_empty(), "no sync span for vm1");
    assert!(
        syncs
            .iter()
            .all(|s| s.fields.get("tenant").is_some_and(|t| t.contains("t1"))),
        "{syncs:?}"
    );
    // the host write: a request span of the kube client opened inside vm1's sync span, for
    // the VM in the tenant's host namespace
    let host_path = format!("/apis/kubevirt.io/v1/namespaces/{host_ns}/virtualmachines");
    let writes: Vec<&Opened> = opened
        .iter()
        .filter(|o| {
            o.parent
                .as_ref()
                .is_some_and(|(n, f)| *n == "sync" && is_vm1(f))
                && o.fields
                    .get("http.url")
                    .is_some_and(|u| u.contains(&host_path))
                && o.fields
                    .get("http.method")
                    .is_some_and(|m| ["POST", "PATCH", "PUT"].contains(&m.as_str()))
        })
        .collect();
    let children: Vec<_> = opened
        .iter()
        .filter(|o| {
            o.parent
                .as_ref()
                .is_some_and(|(n, f)| *n == "sync" && is_vm1(f))
        })
        .map(|o| (o.name, o.fields.clone()))
        .collect();
    assert!(
        !writes.is_empty(),
        "no host write inside the sync span: {children:?}"
    );
}
