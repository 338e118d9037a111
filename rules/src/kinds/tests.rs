//! The kind table's invariants.

use super::*;

#[test]
fn kinds_are_registered_once_in_dependency_order() {
    let names: Vec<&str> = all().iter().map(Kind::name).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for (i, k) in all().iter().enumerate() {
        assert_eq!(k.id.index(), i);
        assert_eq!(get(k.id).name(), k.name());
        assert_eq!(by_kind(k.name()).map(|k| k.id), Some(k.id));
        // what a kind references is registered before it
        for r in k.references(&serde_json::json!({})) {
            assert!(by_kind(r.kind).is_some_and(|d| d.id < k.id));
        }
    }
    let pos = |n: &str| names.iter().position(|x| *x == n);
    assert!(pos("Secret") < pos("VirtualMachine"));
    assert!(pos("DataVolume") < pos("VirtualMachine"));
    assert!(pos("VirtualMachine") < pos("VirtualMachineInstance"));
    for k in SyncKind::ALL {
        assert!(of(k).is_some(), "{k} has a module");
    }
}

#[test]
fn vms_bring_their_instances_and_templated_data_volumes() {
    let on = enablement(&[SyncKind::VirtualMachine]);
    let at = |k: SyncKind| on[of(k).map(|k| k.id.index()).unwrap_or(usize::MAX)];
    assert_eq!(at(SyncKind::VirtualMachine), Enablement::Synced);
    assert_eq!(at(SyncKind::VirtualMachineInstance), Enablement::Synced);
    assert!(matches!(
        at(SyncKind::DataVolume),
        Enablement::MirrorOnly(_)
    ));
    assert_eq!(at(SyncKind::VirtualMachinePool), Enablement::Off);
    let secret = by_kind("Secret").map(|k| on[k.id.index()]);
    assert_eq!(secret, Some(Enablement::Synced));
    assert_eq!(
        watched_sync_kinds(&[SyncKind::VirtualMachine]),
        [
            SyncKind::DataVolume,
            SyncKind::VirtualMachineInstancetype,
            SyncKind::VirtualMachinePreference,
            SyncKind::VirtualMachine,
            SyncKind::VirtualMachineInstance
        ]
    );
    let vmi = of(SyncKind::VirtualMachineInstance).map(|k| k.status_subresource());
    assert_eq!(vmi, Some(false), "VMIs have no /status subresource");
    let only_vmi = enablement(&[SyncKind::VirtualMachineInstance]);
    let dv = of(SyncKind::DataVolume).map(|k| only_vmi[k.id.index()]);
    assert_eq!(dv, Some(Enablement::Off));
}

#[test]
fn pods_can_be_turned_off_and_nothing_else_with_them() {
    let pod = by_kind(pod::KIND)
        .map(|k| k.id.index())
        .unwrap_or(usize::MAX);
    let on = enablement_with_pods(&SyncKind::DEFAULT, true);
    let off = enablement_with_pods(&SyncKind::DEFAULT, false);
    assert_eq!(on, enablement(&SyncKind::DEFAULT));
    assert_eq!(on[pod], Enablement::Synced);
    assert_eq!(off[pod], Enablement::Off);
    for (i, (a, b)) in on.iter().zip(&off).enumerate() {
        if i != pod {
            assert_eq!(a, b, "{}", all()[i].name());
        }
    }
}
