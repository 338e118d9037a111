//! A claim's plan shows the host volume its host copy is bound to before the claim names it,
//! does not refuse the volume name it took up from the host, and removes the shown volume when
//! the binding ends or the claim goes. A claim's host copy stays when no pod or VM uses the
//! claim anymore (it holds the data); a Secret's does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;

use super::fake::*;
use super::*;

fn claim(spec: serde_json::Value) -> DynamicObject {
    obj(
        "PersistentVolumeClaim",
        json!({"metadata": {"name": "data", "namespace": "default", "uid": "t-data",
            "resourceVersion": "3"}, "spec": spec}),
    )
}

fn bound_copy(f: &Fake, t: &DynamicObject, phase: &str) -> DynamicObject {
    let mut h = copy_of(
        f,
        t,
        Some(json!({"phase": phase, "capacity": {"storage": "2Gi"}})),
    );
    h.data["spec"]["volumeName"] = json!("pvc-123");
    h
}

const SPEC: fn() -> serde_json::Value =
    || json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});

#[test]
fn a_bound_claim_shows_its_volume_then_names_it() {
    let mut f = Fake::new();
    f.referenced = true;
    let t = claim(SPEC());
    let h = bound_copy(&f, &t, "Bound");
    let p = run(&f, "PersistentVolumeClaim", Some(&t), Some(&h));
    let show = p
        .steps
        .iter()
        .position(|s| *s == Step::ShowVolume("pvc-123".into()));
    let name = p
        .steps
        .iter()
        .position(|s| *s == Step::TakeUp(json!({"spec": {"volumeName": "pvc-123"}})));
    assert!(show.is_some() && show < name, "{:?}", p.steps);
    assert!(!p.steps.iter().any(|s| matches!(s, Step::ReplaceHost(_))));

    // named: no refusal, no write to the host copy, the host's status up
    let mut named = SPEC();
    named["volumeName"] = json!("pvc-123");
    let t = claim(named);
    let p = run(&f, "PersistentVolumeClaim", Some(&t), Some(&h));
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s, Step::Refuse(_) | Step::ReplaceHost(_) | Step::TakeUp(_))),
        "{:?}",
        p.steps
    );
    assert!(p.steps.contains(&Step::ShowVolume("pvc-123".into())));
    assert!(p.steps.iter().any(|s| matches!(s, Step::StatusUp(_))));
}

#[test]
fn a_claim_naming_a_volume_the_host_did_not_bind_is_refused() {
    let mut f = Fake::new();
    f.referenced = true;
    let mut spec = SPEC();
    spec["volumeName"] = json!("someone-elses");
    let t = claim(spec);
    let p = run(&f, "PersistentVolumeClaim", Some(&t), None);
    assert!(matches!(p.steps.as_slice(), [Step::Refuse(v)] if v[0].path == "spec.volumeName"));
    let h = bound_copy(&f, &claim(SPEC()), "Bound");
    let p = run(&f, "PersistentVolumeClaim", Some(&t), Some(&h));
    assert!(
        matches!(p.steps.as_slice(), [Step::Refuse(_)]),
        "{:?}",
        p.steps
    );
}

#[test]
fn the_shown_volume_goes_with_the_binding_the_claim_or_its_sync() {
    let mut f = Fake::new();
    f.referenced = true;
    let mut named = SPEC();
    named["volumeName"] = json!("pvc-123");
    let t = claim(named);
    // the host volume was deleted: the host claim is Lost
    let lost = bound_copy(&f, &t, "Lost");
    let p = run(&f, "PersistentVolumeClaim", Some(&t), Some(&lost));
    assert!(
        p.steps.contains(&Step::HideVolume("pvc-123".into())),
        "{:?}",
        p.steps
    );
    // the tenant claim is gone
    let h = bound_copy(&f, &t, "Bound");
    let p = run(&f, "PersistentVolumeClaim", None, Some(&h));
    assert_eq!(
        p.steps,
        [
            Step::ConfirmTenantGone,
            Step::DeleteHost,
            Step::HideVolume("pvc-123".into())
        ]
    );
    // no longer used by a synced pod or VM (a Deployment scaled to zero): the host copy stays,
    // with the data, and the volume is still shown
    f.referenced = false;
    let p = run(&f, "PersistentVolumeClaim", Some(&t), Some(&h));
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s, Step::DeleteHost | Step::HideVolume(_))),
        "{:?}",
        p.steps
    );
    assert!(p.steps.contains(&Step::ShowVolume("pvc-123".into())));
    // never used: never synced
    let p = run(&f, "PersistentVolumeClaim", Some(&claim(SPEC())), None);
    assert!(p.steps.is_empty(), "{:?}", p.steps);
}

#[test]
fn a_secret_no_longer_referenced_loses_its_host_copy() {
    let mut f = Fake::new();
    f.referenced = false;
    let t = obj(
        "Secret",
        json!({"metadata": {"name": "ci", "namespace": "default", "uid": "t-ci",
            "resourceVersion": "3"}, "data": {}}),
    );
    let h = copy_of(&f, &t, None);
    let p = run(&f, "Secret", Some(&t), Some(&h));
    assert_eq!(p.steps, [Step::DeleteHost]);
}

#[test]
fn an_update_of_a_bound_copy_keeps_the_volume_the_host_bound_it_to() {
    let mut f = Fake::new();
    f.referenced = true;
    let t = claim(SPEC());
    let h = bound_copy(&f, &t, "Bound");
    // the tenant's binder marks its claim bound: the copy is updated
    let mut marked = t.clone();
    marked.metadata.annotations = Some(
        [(
            "pv.kubernetes.io/bind-completed".to_string(),
            "yes".to_string(),
        )]
        .into(),
    );
    let p = run(&f, "PersistentVolumeClaim", Some(&marked), Some(&h));
    let Some(Step::ReplaceHost(put)) = p.steps.iter().find(|s| matches!(s, Step::ReplaceHost(_)))
    else {
        panic!("{:?}", p.steps);
    };
    assert_eq!(put.data["spec"]["volumeName"], "pvc-123");
}
