use super::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use kvtenant_api::{ExposeType, VirtualClusterSpec};
use time::OffsetDateTime;

fn vc(spec: VirtualClusterSpec) -> VirtualCluster {
    let mut vc = VirtualCluster::new("alpha", spec);
    vc.metadata.namespace = Some("tenants".into());
    vc.metadata.uid = Some("uid-1".into());
    vc
}

fn pki_for(t: &Target<'_>) -> Pki {
    let req = pki::PkiRequest {
        cluster: "tenants/alpha".into(),
        apiserver_sans: apiserver_sans(t, None),
        etcd_peer_sans: etcd_peer_sans(t),
    };
    pki::ensure(
        &BTreeMap::new(),
        &req,
        OffsetDateTime::now_utc(),
        time::Duration::days(30),
    )
    .unwrap()
    .0
}

fn container<'a>(sts: &'a StatefulSet, name: &str) -> &'a k8s_openapi::api::core::v1::Container {
    sts.spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn names_fit_the_statefulset_limit() {
    let long = "a".repeat(kvtenant_api::VIRTUALCLUSTER_NAME_MAX_LEN);
    let n = Names::new(&long);
    assert!(n.statefulset.len() <= 52, "{}", n.statefulset);
    assert!(n.service.len() <= 63);
    assert!(n.kubeconfig_secret.len() <= 63);
}

#[test]
fn serving_certificate_names_and_endpoint() {
    let mut spec = VirtualClusterSpec::default();
    let v = vc(spec.clone());
    let t = Target::new(&v).unwrap();
    let sans = apiserver_sans(&t, None);
    for want in [
        "alpha-apiserver.tenants.svc",
        "alpha-apiserver.tenants.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "kubernetes.default.svc",
    ] {
        assert!(
            sans.iter().any(|s| s == want),
            "{want} missing from {sans:?}"
        );
    }
    assert_eq!(
        endpoint(&t, None),
        "https://alpha-apiserver.tenants.svc:443"
    );

    spec.expose.extra_sans = vec!["vc.example.com".into(), "192.0.2.7".into()];
    spec.expose.type_ = ExposeType::NodePort;
    let v = vc(spec);
    let t = Target::new(&v).unwrap();
    let sans = apiserver_sans(&t, None);
    assert!(sans.contains(&"vc.example.com".to_owned()));
    assert!(sans.contains(&"192.0.2.7".to_owned()));
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "alpha-apiserver"},
        "spec": {"clusterIP": "10.0.0.9", "ports": [{"port": 443, "nodePort": 31443}]},
    }))
    .unwrap();
    assert!(apiserver_sans(&t, Some(&svc)).contains(&"10.0.0.9".to_owned()));
    assert_eq!(endpoint(&t, Some(&svc)), "https://vc.example.com:31443");
}

#[test]
fn statefulset_runs_the_spec_versions_with_probes_volumes_and_owner() {
    let mut spec = VirtualClusterSpec {
        kubernetes_version: "v1.36.1".into(),
        ..VirtualClusterSpec::default()
    };
    spec.control_plane.storage.storage_class_name = Some("fast".into());
    let v = vc(spec);
    let t = Target::new(&v).unwrap();
    let sts = statefulset(&t, "h1").unwrap();
    assert_eq!(sts.metadata.name.as_deref(), Some("alpha-cp"));
    assert_eq!(
        sts.metadata.owner_references.as_ref().unwrap()[0].name,
        "alpha"
    );
    assert_eq!(
        sts.metadata.owner_references.as_ref().unwrap()[0].controller,
        Some(true)
    );
    assert_eq!(sts.spec.replicas, Some(1));
    let api = container(&sts, "kube-apiserver");
    assert_eq!(
        api.image.as_deref(),
        Some("registry.k8s.io/kube-apiserver:v1.36.1")
    );
    assert_eq!(
        api.command.as_deref(),
        Some(&["kube-apiserver".to_owned()][..])
    );
    let args = api.args.clone().unwrap();
    assert!(args.contains(&format!("--secure-port={APISERVER_PORT}")));
    assert!(args.contains(&"--etcd-servers=http://127.0.0.1:2379".to_owned()));
    let probe = api
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    assert_eq!(
        api.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/livez")
    );
    assert!(api.resources.as_ref().unwrap().requests.is_some());
    let kcm = container(&sts, "kube-controller-manager");
    assert_eq!(
        kcm.image.as_deref(),
        Some("registry.k8s.io/kube-controller-manager:v1.36.1")
    );
    let etcd = container(&sts, "etcd");
    assert_eq!(
        etcd.image.as_deref(),
        Some(kvtenant_api::DEFAULT_ETCD_IMAGE)
    );
    let pvc = &sts.spec.volume_claim_templates.as_ref().unwrap()[0];
    let pvc_spec = pvc.spec.as_ref().unwrap();
    assert_eq!(pvc_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        pvc_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        kvtenant_api::DEFAULT_STORAGE_SIZE
    );
    let tmpl = &sts.spec.template;
    assert_eq!(
        tmpl.metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[PKI_HASH],
        "h1"
    );
    let labels = tmpl.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert!(
        !labels.contains_key(kvtenant_api::labels::VIRTUALCLUSTER_UID),
        "VirtualCluster labels stay off pods"
    );
}

#[test]
fn version_change_changes_the_pod_template_and_pause_scales_to_zero() {
    let v1 = vc(VirtualClusterSpec::default());
    let mut spec = VirtualClusterSpec {
        kubernetes_version: "v1.37.3".into(),
        ..VirtualClusterSpec::default()
    };
    let v2 = vc(spec.clone());
    let a = statefulset(&Target::new(&v1).unwrap(), "h").unwrap();
    let b = statefulset(&Target::new(&v2).unwrap(), "h").unwrap();
    assert_ne!(a.spec.template, b.spec.template);
    spec.paused = true;
    let v3 = vc(spec);
    let c = statefulset(&Target::new(&v3).unwrap(), "h").unwrap();
    assert_eq!(c.spec.replicas, Some(0));
    assert_eq!(
        c.spec.template, b.spec.template,
        "pausing does not roll the pod"
    );
}

#[test]
fn kine_replaces_etcd() {
    let mut spec = VirtualClusterSpec::default();
    spec.control_plane.datastore = kvtenant_api::Datastore::Kine;
    let v = vc(spec);
    let sts = statefulset(&Target::new(&v).unwrap(), "h").unwrap();
    let kine = container(&sts, "kine");
    assert_eq!(
        kine.image.as_deref(),
        Some(kvtenant_api::DEFAULT_KINE_IMAGE)
    );
    // the database file sits at the root of the mounted volume: kine does not create the
    // directories of a DSN it is given, and a fresh volume has only its root
    let mount = &kine.volume_mounts.as_ref().unwrap()[0].mount_path;
    assert!(
        kine.args.as_ref().unwrap().iter().any(|a| a
            == &format!("--endpoint=sqlite://{mount}/kine.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate")),
        "{:?}",
        kine.args
    );
    assert!(
        kine.args
            .as_ref()
            .unwrap()
            .contains(&"--metrics-bind-address=0".to_owned())
    );
    let names: Vec<_> = sts
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert!(!names.contains(&"etcd".to_owned()));
}

#[test]
fn secrets_hold_the_pki_and_a_kubeconfig_for_the_endpoint() {
    let v = vc(VirtualClusterSpec::default());
    let t = Target::new(&v).unwrap();
    let pki = pki_for(&t);
    let s = pki_secret(&t, &pki);
    let data = s.data.as_ref().unwrap();
    for key in [
        pki::keys::CA_CRT,
        pki::keys::APISERVER_KEY,
        pki::keys::SA_KEY,
        pki::keys::CONTROLLER_MANAGER_CONF,
    ] {
        assert!(data.contains_key(key), "{key}");
    }
    let kcm_conf = String::from_utf8(data[pki::keys::CONTROLLER_MANAGER_CONF].0.clone()).unwrap();
    assert!(kcm_conf.contains("server: https://127.0.0.1:6443"));
    let kc = kubeconfig_secret(&t, &pki, "https://alpha-apiserver.tenants.svc:443");
    assert_eq!(kc.metadata.name.as_deref(), Some("alpha-kubeconfig"));
    let text = String::from_utf8(kc.data.as_ref().unwrap()[KUBECONFIG_KEY].0.clone()).unwrap();
    assert!(text.contains("server: https://alpha-apiserver.tenants.svc:443"));
    assert!(!format!("{s:?}").contains("PRIVATE KEY"),);
}

#[test]
fn services_follow_expose() {
    let mut spec = VirtualClusterSpec::default();
    spec.expose.type_ = ExposeType::LoadBalancer;
    spec.expose.service_annotations = BTreeMap::from([("lb/pool".into(), "a".into())]);
    let v = vc(spec);
    let t = Target::new(&v).unwrap();
    let [main, headless] = services(&t).unwrap();
    let ms = main.spec.as_ref().unwrap();
    assert_eq!(ms.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(ms.ports.as_ref().unwrap()[0].port, 443);
    assert_eq!(main.metadata.annotations.as_ref().unwrap()["lb/pool"], "a");
    assert_eq!(
        headless.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    assert_eq!(ms.selector, Some(t.pod_labels()));
}

#[test]
fn the_tenant_controller_manager_leaves_storage_and_node_health_to_the_host() {
    let cmd = controller_manager_command();
    let controllers: Vec<&str> = cmd
        .iter()
        .find_map(|a| a.strip_prefix("--controllers="))
        .expect("a --controllers flag")
        .split(',')
        .collect();
    assert_eq!(controllers[0], "*", "every default controller otherwise");
    for off in [
        "-persistentvolume-binder-controller",
        "-persistentvolume-attach-detach-controller",
        "-node-lifecycle-controller",
    ] {
        assert!(controllers.contains(&off), "{off} missing: {controllers:?}");
    }
}

#[test]
fn the_apiserver_presents_its_webhook_client_certificate_to_kvtenants_webhook_service() {
    let v = vc(VirtualClusterSpec::default());
    let t = Target::new(&v).unwrap();
    let pki = pki_for(&t);
    let data = pki_secret(&t, &pki).data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    // the flag names a file of the apiserver's mounted Secret items; the file names another
    let sts = statefulset(&t, "h").unwrap();
    let args = container(&sts, "kube-apiserver").args.clone().unwrap();
    let flag = format!("--admission-control-config-file={APISERVER_PKI_DIR}/admission-config.yaml");
    assert!(args.contains(&flag), "{args:?}");
    let volumes = sts
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap();
    let mounted: Vec<String> = volumes
        .iter()
        .find(|v| v.name == "apiserver-pki")
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.items.clone())
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    for key in [pki::keys::ADMISSION_CONFIG, pki::keys::WEBHOOK_KUBECONFIG] {
        assert!(mounted.iter().any(|m| m == key), "{key} mounted");
    }
    assert!(
        !mounted
            .iter()
            .any(|m| m == pki::keys::WEBHOOK_CLIENT_CA_KEY),
        "the CA key stays in the Secret"
    );
    let config = text(pki::keys::ADMISSION_CONFIG);
    assert!(config.contains(&format!(
        "kubeConfigFile: \"{APISERVER_PKI_DIR}/{}\"",
        pki::keys::WEBHOOK_KUBECONFIG
    )));
    let kubeconfig = text(pki::keys::WEBHOOK_KUBECONFIG);
    assert!(kubeconfig.contains("- name: \"kvtenant-webhooks.kube-system.svc:443\""));
    assert!(kubeconfig.contains("- name: \"kvtenant-webhooks.kube-system.svc\""));
    assert!(
        kubeconfig.contains("- name: \"*\""),
        "the webhook server on another port"
    );
    use base64::Engine as _;
    let b64 =
        base64::engine::general_purpose::STANDARD.encode(pki.webhook_client.cert_pem.as_bytes());
    assert!(kubeconfig.contains(&b64));
    // the syncer reads the CA (not its key) from the kubeconfig Secret
    let kc = kubeconfig_secret(&t, &pki, "https://alpha-apiserver.tenants.svc:443")
        .data
        .unwrap();
    assert_eq!(
        kc[kvtenant_api::labels::WEBHOOK_CLIENT_CA_KEY].0,
        pki.webhook_client_ca.cert_pem.as_bytes()
    );
    assert!(!format!("{kc:?}").contains("PRIVATE KEY"));
    // signed by that CA, named as the webhook server expects
    let (_, cert) =
        x509_parser::pem::parse_x509_pem(pki.webhook_client.cert_pem.as_bytes()).unwrap();
    let cert = cert.parse_x509().unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cn, kvtenant_api::labels::WEBHOOK_CLIENT_CN);
    assert!(
        cert.issuer()
            .to_string()
            .contains("kvtenant-webhook-client-ca")
    );
}

#[test]
fn an_external_etcd_replaces_the_datastore_container_and_the_volume() {
    let mut spec = VirtualClusterSpec::default();
    spec.control_plane.datastore = kvtenant_api::Datastore::ExternalEtcd;
    spec.control_plane.external_etcd = Some(
        serde_json::from_value(serde_json::json!({
            "endpoints": ["https://etcd-0.db:2379", "https://etcd-1.db:2379"],
            "tlsSecretRef": {"name": "etcd-client"}
        }))
        .unwrap(),
    );
    let v = vc(spec);
    let t = Target::new(&v).unwrap();
    let sts = statefulset(&t, "h").unwrap();
    let pod = sts.spec.template.spec.as_ref().unwrap();
    let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kube-apiserver", "kube-controller-manager"]);
    assert!(
        sts.spec
            .volume_claim_templates
            .as_ref()
            .is_none_or(|v| v.is_empty()),
        "no volume of its own"
    );
    let args = container(&sts, "kube-apiserver").args.clone().unwrap();
    let servers: Vec<_> = args
        .iter()
        .filter(|a| a.starts_with("--etcd-servers="))
        .collect();
    assert_eq!(
        servers,
        ["--etcd-servers=https://etcd-0.db:2379,https://etcd-1.db:2379"]
    );
    let uid = v.metadata.uid.clone().unwrap();
    assert!(args.contains(&format!("--etcd-prefix=/kvtenant/{uid}")));
    assert!(args.contains(&format!("--etcd-certfile={ETCD_CLIENT_DIR}/tls.crt")));
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "etcd-client")
        .unwrap();
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("etcd-client")
    );
}

#[test]
fn an_external_database_runs_kine_with_the_dsn_from_the_secret_and_no_volume() {
    let mut spec = VirtualClusterSpec::default();
    spec.control_plane.datastore = kvtenant_api::Datastore::ExternalDatabase;
    spec.control_plane.external_database = Some(
        serde_json::from_value(serde_json::json!({
            "dsnSecretRef": {"name": "pg", "key": "url"},
            "tlsSecretRef": {"name": "pg-tls"}
        }))
        .unwrap(),
    );
    let v = vc(spec);
    let mut t = Target::new(&v).unwrap();
    let sts = statefulset(&t, "h").unwrap();
    assert!(
        sts.spec
            .volume_claim_templates
            .as_ref()
            .is_none_or(|v| v.is_empty()),
        "no volume of its own"
    );
    let kine = container(&sts, "kine");
    let args = kine.args.clone().unwrap_or_default();
    assert!(
        !args.iter().any(|a| a.starts_with("--endpoint")),
        "the DSN is not on the command line: {args:?}"
    );
    let env = &kine.env.as_ref().unwrap()[0];
    assert_eq!(env.name, KINE_ENDPOINT_ENV);
    let from = env
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!((from.name.as_str(), from.key.as_str()), ("pg", "url"));
    assert!(args.contains(&format!("--ca-file={DATABASE_TLS_DIR}/ca.crt")));
    assert!(
        !args.iter().any(|a| a.starts_with("--cert-file")),
        "no client certificate in the Secret: none passed"
    );
    let mounts = kine.volume_mounts.as_ref().unwrap();
    assert_eq!(mounts.len(), 1, "the TLS files only, no data volume");
    assert_eq!(mounts[0].mount_path, DATABASE_TLS_DIR);
    let uid = v.metadata.uid.clone().unwrap();
    let apiserver = container(&sts, "kube-apiserver").args.clone().unwrap();
    assert!(apiserver.contains(&format!("--etcd-prefix=/kvtenant/{uid}")));

    t.database_client_cert = true;
    let sts = statefulset(&t, "h").unwrap();
    let args = container(&sts, "kine").args.clone().unwrap();
    assert!(args.contains(&format!("--cert-file={DATABASE_TLS_DIR}/tls.crt")));
    assert!(args.contains(&format!("--key-file={DATABASE_TLS_DIR}/tls.key")));
}

#[test]
fn the_kubelet_proxy_ca_is_verified_when_known() {
    let v = vc(VirtualClusterSpec::default());
    let mut t = Target::new(&v).unwrap();
    let flag = format!("--kubelet-certificate-authority={APISERVER_PKI_DIR}/kubelet-ca.crt");
    let sts = statefulset(&t, "h").unwrap();
    assert!(
        !container(&sts, "kube-apiserver")
            .args
            .clone()
            .unwrap()
            .contains(&flag)
    );
    t.kubelet_ca = Some("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into());
    let sts = statefulset(&t, "h").unwrap();
    assert!(
        container(&sts, "kube-apiserver")
            .args
            .clone()
            .unwrap()
            .contains(&flag)
    );
    let pod = sts.spec.template.spec.unwrap();
    let pki_volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "apiserver-pki")
        .unwrap();
    assert!(
        pki_volume
            .secret
            .unwrap()
            .items
            .unwrap()
            .iter()
            .any(|i| i.key == pki::keys::KUBELET_CA_CRT)
    );
    let secret = pki_secret(&t, &pki_for(&t));
    assert!(secret.data.unwrap().contains_key(pki::keys::KUBELET_CA_CRT));
}
