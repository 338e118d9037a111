//! The reviewed RBAC of each component (see `tests/rbac.rs`): one line per rule as the
//! apiserver lists it (`kubectl auth can-i --list`): `resources [non-resource URLs] [resource
//! names] [verbs]`. The URL rules are what every authenticated user may read (discovery,
//! health, version, OIDC discovery).
//!
//! Reviewed 2026-12-05. Broad on purpose, and confined otherwise: the tenants' host namespaces
//! are made at run time, so the syncer's rights on namespaced kinds are cluster-wide; its
//! creates, updates and deletes are confined to kvtenant's host namespaces by the
//! ValidatingAdmissionPolicies of `deploy/base/admission-policy.yaml` (the controller's only for
//! namespaces, quotas, limit ranges and network policies: it writes a VirtualCluster's Secrets,
//! Services and StatefulSets in whatever namespace that is in). Not confined: the syncer reads
//! every Secret, ConfigMap and Pod of the host cluster; `pods/exec`, `pods/attach` and
//! `pods/portforward` are CONNECT calls the policies do not cover; KubeVirt's subresources are
//! served by virt-api, where the host apiserver's admission does not run (README "Hostile
//! tenants, isolation and fuzzing", known limits).

/// kvtenant-syncer, in every namespace (cluster-wide rules).
pub const SYNCER_CLUSTER: &[&str] = &[
    "[/.well-known/openid-configuration/] [] [get]",
    "[/.well-known/openid-configuration] [] [get]",
    "[/api/*] [] [get]",
    "[/api] [] [get]",
    "[/apis/*] [] [get]",
    "[/apis] [] [get]",
    "[/healthz] [] [get]",
    "[/livez] [] [get]",
    "[/openapi/*] [] [get]",
    "[/openapi] [] [get]",
    "[/openid/v1/jwks/] [] [get]",
    "[/openid/v1/jwks] [] [get]",
    "[/readyz] [] [get]",
    "[/version/] [] [get]",
    "[/version] [] [get]",
    "apiservices.apiregistration.k8s.io [] [] [get list watch]",
    // the host's CDIConfig, whose filesystem overhead the tenants' CDIConfigs show (added
    // 2026-12-06)
    "cdiconfigs.cdi.kubevirt.io [] [config] [get]",
    "clustertrustbundles.certificates.k8s.io [] [] [get list watch]",
    "configmaps [] [] [get list watch create update patch delete]",
    // KubeVirt's ControllerRevisions of VMs' instancetypes, shown read-only (cluster-wide
    // read: the host's DaemonSets' and StatefulSets' revisions too)
    "controllerrevisions.apps [] [] [get list watch]",
    "customresourcedefinitions.apiextensions.k8s.io [] [] [get list watch]",
    // golden images: the DataImportCrons managing the allowed DataSources, listed in those
    // DataSources' namespaces (added 2026-12-06)
    "dataimportcrons.cdi.kubevirt.io [] [] [list]",
    // golden images: the allowed host DataSources, read by name (added 2026-12-05)
    "datasources.cdi.kubevirt.io [] [] [get]",
    "datavolumes.cdi.kubevirt.io [] [] [get list watch create update patch delete]",
    "datavolumes.cdi.kubevirt.io/status [] [] [get update patch]",
    "endpointslices.discovery.k8s.io [] [] [get list watch create update patch delete]",
    "events [] [] [get list watch delete create patch]",
    "events.events.k8s.io [] [] [create patch]",
    "expand-vm-spec.subresources.kubevirt.io [] [] [update]",
    "ingressclasses.networking.k8s.io [] [] [get list]",
    "ingresses.networking.k8s.io [] [] [get list watch create update patch delete]",
    "ingresses.networking.k8s.io/status [] [] [get]",
    // the isolation of each host namespace (spec.isolation), applied by the syncer; writes
    // confined to the host namespaces by the admission policy (added 2026-12-06)
    "limitranges [] [] [get create patch delete]",
    "mutatingwebhookconfigurations.admissionregistration.k8s.io [] [] [get list watch]",
    // patch: the Pod Security labels when spec.isolation.podSecurity changes, only on
    // namespaces already kvtenant's (admission policy; added 2026-12-06)
    "namespaces [] [] [get list watch create patch delete]",
    // secondary networks (opt-in kind): the tenants' in their host namespaces, writes confined
    // there by the admission policy (k8s.cni.cncf.io added 2026-12-05); the allowed host ones
    // read by name
    "network-attachment-definitions.k8s.cni.cncf.io [] [] [get list watch create update patch delete]",
    "networkpolicies.networking.k8s.io [] [] [get list watch create update patch delete]",
    "nodes [] [] [get list]",
    // the tenants' `kubectl top`: read in a tenant's host namespaces and for the host nodes it
    // is shown only (checked by the proxy)
    "nodes.metrics.k8s.io [] [] [get list]",
    "persistentvolumeclaims [] [] [get list watch create update patch delete]",
    "persistentvolumes [] [] [get]",
    "poddisruptionbudgets.policy [] [] [get list watch create update patch delete]",
    "poddisruptionbudgets.policy/status [] [] [get]",
    "pods [] [] [get list watch create update patch delete]",
    "pods/attach [] [] [get create]",
    "pods/exec [] [] [get create]",
    "pods/log [] [] [get]",
    "pods/portforward [] [] [get create]",
    "pods.metrics.k8s.io [] [] [get list]",
    "priorityclasses.scheduling.k8s.io [] [] [get list]",
    // with limitranges above (added 2026-12-06)
    "resourcequotas [] [] [get create patch delete]",
    "secrets [] [] [get list watch create update patch delete]",
    "selfsubjectaccessreviews.authorization.k8s.io [] [] [create]",
    "selfsubjectreviews.authentication.k8s.io [] [] [create]",
    "selfsubjectrulesreviews.authorization.k8s.io [] [] [create]",
    "serviceaccounts [] [] [get list watch create update patch delete]",
    "servicecidrs.networking.k8s.io [] [] [list]",
    "services [] [] [get list watch create update patch delete]",
    // watch: with the VolumeSnapshotClasses and StorageProfiles below, the VolumeSnapshotClass
    // of a tenant VM's claims (spec.vmPolicy.allowedVolumeSnapshotClasses; added 2026-12-06)
    "storageclasses.storage.k8s.io [] [] [get list watch]",
    // the host's CDI StorageProfiles, read for the same (added 2026-12-06)
    "storageprofiles.cdi.kubevirt.io [] [] [get list watch]",
    // virtctl image-upload: upload tokens of the host's CDI for the tenants' claims, asked in
    // their host namespaces only (checked by the proxy; added 2026-12-06)
    "uploadtokenrequests.upload.cdi.kubevirt.io [] [] [create]",
    "validatingwebhookconfigurations.admissionregistration.k8s.io [] [] [get list watch]",
    "virtualclusters.tenancy.kvtenant.io [] [] [get list watch]",
    "virtualclusters.tenancy.kvtenant.io/status [] [] [get patch]",
    "virtualmachineclones.clone.kubevirt.io [] [] [get list watch create update patch delete]",
    "virtualmachineclones.clone.kubevirt.io/status [] [] [get update patch]",
    "virtualmachineclusterinstancetypes.instancetype.kubevirt.io [] [] [get list watch]",
    "virtualmachineclusterpreferences.instancetype.kubevirt.io [] [] [get list watch]",
    "virtualmachineinstancemigrations.kubevirt.io [] [] [get list watch create update patch delete]",
    "virtualmachineinstancemigrations.kubevirt.io/status [] [] [get update patch]",
    "virtualmachineinstances.kubevirt.io [] [] [get list watch create update patch delete]",
    "virtualmachineinstances.subresources.kubevirt.io/addvolume [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/backup [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/console [] [] [get]",
    "virtualmachineinstances.subresources.kubevirt.io/evacuate [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/filesystemlist [] [] [get]",
    "virtualmachineinstances.subresources.kubevirt.io/freeze [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/guestosinfo [] [] [get]",
    "virtualmachineinstances.subresources.kubevirt.io/objectgraph [] [] [get]",
    "virtualmachineinstances.subresources.kubevirt.io/pause [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/portforward [] [] [get]",
    "virtualmachineinstances.subresources.kubevirt.io/redefine-checkpoint [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/removevolume [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/reset [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/sev [] [] [get update]",
    "virtualmachineinstances.subresources.kubevirt.io/softreboot [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/unfreeze [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/unpause [] [] [update]",
    "virtualmachineinstances.subresources.kubevirt.io/usbredir [] [] [get]",
    "virtualmachineinstances.subresources.kubevirt.io/userlist [] [] [get]",
    "virtualmachineinstances.subresources.kubevirt.io/vnc [] [] [get]",
    "virtualmachineinstances.subresources.kubevirt.io/vsock [] [] [get]",
    "virtualmachineinstancetypes.instancetype.kubevirt.io [] [] [get list watch create update patch delete]",
    "virtualmachinepools.pool.kubevirt.io [] [] [get list watch create update patch delete]",
    "virtualmachinepools.pool.kubevirt.io/status [] [] [get update patch]",
    "virtualmachinepreferences.instancetype.kubevirt.io [] [] [get list watch create update patch delete]",
    // exports (opt-in kind), confined to the host namespaces by the admission policy
    // (export.kubevirt.io added 2026-12-06)
    "virtualmachineexports.export.kubevirt.io [] [] [get list watch create update patch delete]",
    "virtualmachineexports.export.kubevirt.io/status [] [] [get update patch]",
    // snapshots and restores (opt-in kind); writes confined to the host namespaces by the
    // admission policy like the other KubeVirt groups (snapshot.kubevirt.io added 2026-12-05)
    "virtualmachinerestores.snapshot.kubevirt.io [] [] [get list watch create update patch delete]",
    "virtualmachinerestores.snapshot.kubevirt.io/status [] [] [get update patch]",
    "virtualmachinesnapshotcontents.snapshot.kubevirt.io [] [] [get list watch delete]",
    "virtualmachinesnapshots.snapshot.kubevirt.io [] [] [get list watch create update patch delete]",
    "virtualmachinesnapshots.snapshot.kubevirt.io/status [] [] [get update patch]",
    "virtualmachines.kubevirt.io [] [] [get list watch create update patch delete]",
    "virtualmachines.kubevirt.io/status [] [] [get update patch]",
    "virtualmachines.subresources.kubevirt.io/addvolume [] [] [update]",
    "virtualmachines.subresources.kubevirt.io/evacuate [] [] [update]",
    "virtualmachines.subresources.kubevirt.io/expand-spec [] [] [get]",
    "virtualmachines.subresources.kubevirt.io/memorydump [] [] [update]",
    "virtualmachines.subresources.kubevirt.io/migrate [] [] [update]",
    "virtualmachines.subresources.kubevirt.io/objectgraph [] [] [get]",
    "virtualmachines.subresources.kubevirt.io/portforward [] [] [get]",
    "virtualmachines.subresources.kubevirt.io/removememorydump [] [] [update]",
    "virtualmachines.subresources.kubevirt.io/removevolume [] [] [update]",
    "virtualmachines.subresources.kubevirt.io/restart [] [] [update]",
    "virtualmachines.subresources.kubevirt.io/start [] [] [update]",
    "virtualmachines.subresources.kubevirt.io/stop [] [] [update]",
    // the CSI VolumeSnapshots of VMs' claims the host's KubeVirt makes, shown read-only
    // (added 2026-12-06)
    // the host's VolumeSnapshotClasses, read for the VolumeSnapshotClass of a tenant VM's
    // claims (spec.vmPolicy.allowedVolumeSnapshotClasses; added 2026-12-06)
    "volumesnapshotclasses.snapshot.storage.k8s.io [] [] [get list watch]",
    "volumesnapshots.snapshot.storage.k8s.io [] [] [get list watch]",
];

/// kvtenant-syncer, in addition, in kvtenant-system (leader election).
pub const SYNCER_OWN_NAMESPACE: &[&str] = &[
    "leases.coordination.k8s.io [] [] [create]",
    "leases.coordination.k8s.io [] [kvtenant-syncer] [get update]",
];

/// kvtenant-controller, in every namespace (cluster-wide rules).
pub const CONTROLLER_CLUSTER: &[&str] = &[
    "[/.well-known/openid-configuration/] [] [get]",
    "[/.well-known/openid-configuration] [] [get]",
    "[/api/*] [] [get]",
    "[/api] [] [get]",
    "[/apis/*] [] [get]",
    "[/apis] [] [get]",
    "[/healthz] [] [get]",
    "[/livez] [] [get]",
    "[/openapi/*] [] [get]",
    "[/openapi] [] [get]",
    "[/openid/v1/jwks/] [] [get]",
    "[/openid/v1/jwks] [] [get]",
    "[/readyz] [] [get]",
    "[/version/] [] [get]",
    "[/version] [] [get]",
    "clustertrustbundles.certificates.k8s.io [] [] [get list watch]",
    "configmaps [] [] [get list watch create update patch delete]",
    "events [] [] [create patch]",
    "events.events.k8s.io [] [] [create patch]",
    "ingresses.networking.k8s.io [] [] [get list watch create update patch delete]",
    "limitranges [] [] [get list watch create update patch delete]",
    "namespaces [] [] [get list watch patch delete]",
    "networkpolicies.networking.k8s.io [] [] [get list watch create update patch delete]",
    "poddisruptionbudgets.policy [] [] [get list watch create update patch delete]",
    "pods [] [] [get]",
    "pods/portforward [] [] [get create]",
    "resourcequotas [] [] [get list watch create update patch delete]",
    "secrets [] [] [get list watch create update patch delete]",
    "selfsubjectaccessreviews.authorization.k8s.io [] [] [create]",
    "selfsubjectreviews.authentication.k8s.io [] [] [create]",
    "selfsubjectrulesreviews.authorization.k8s.io [] [] [create]",
    "services [] [] [get list watch create update patch delete]",
    "statefulsets.apps [] [] [get list watch create update patch delete]",
    "virtualclusters.tenancy.kvtenant.io [] [] [get list watch update patch]",
    "virtualclusters.tenancy.kvtenant.io/finalizers [] [] [update]",
    "virtualclusters.tenancy.kvtenant.io/status [] [] [get update patch]",
];

/// kvtenant-controller, in addition, in kvtenant-system (leader election).
pub const CONTROLLER_OWN_NAMESPACE: &[&str] =
    &["leases.coordination.k8s.io [] [] [get create update patch]"];
