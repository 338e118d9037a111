use super::*;

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn control_plane_pod() -> Pod {
    pod(json!({
        "metadata": {"name": "a-cp-0", "namespace": "vc-a", "uid": "u1"},
        "spec": {"nodeName": "runner", "containers": [
            {"name": "etcd", "image": "etcd:3", "command": ["etcd"],
             "args": ["--listen-client-urls=http://127.0.0.1:2379", "--listen-metrics-urls=http://0.0.0.0:2381",
                      "--data-dir=/var/lib/kvtenant/etcd"],
             "ports": [{"name": "etcd-metrics", "containerPort": 2381}],
             "volumeMounts": [{"name": "data", "mountPath": "/var/lib/kvtenant"}]},
            {"name": "kube-apiserver", "image": "kas:1", "command": ["/usr/local/bin/kube-apiserver"],
             "args": ["--advertise-address=$(POD_IP)", "--secure-port=6443",
                      "--etcd-servers=http://127.0.0.1:2379", "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
                      "--literal=$$(POD_IP)", "--unknown=$(NOPE)"],
             "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                     {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
             "ports": [{"name": "https", "containerPort": 6443}],
             "readinessProbe": {"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"}},
             "volumeMounts": [{"name": "pki", "mountPath": "/etc/kubernetes/pki"},
                              {"name": "etc", "mountPath": "/etc/kubernetes"}]}
        ]}
    }))
}

fn ports() -> BTreeMap<u16, u16> {
    [(2379, 40001), (2381, 40002), (6443, 40003)].into()
}

#[test]
fn port_map_covers_declared_and_named_ports_once_each() {
    let mut next = 50000;
    let map = port_map(&control_plane_pod(), &[2379, 6443], || {
        next += 1;
        Ok(next)
    })
    .unwrap();
    assert_eq!(map.keys().copied().collect::<Vec<_>>(), [2379, 2381, 6443]);
    let mut locals: Vec<u16> = map.values().copied().collect();
    locals.dedup();
    assert_eq!(locals.len(), 3);
}

#[test]
fn rewrite_maps_whole_port_numbers_listen_addresses_and_longest_mounts_first() {
    let mounts = vec![
        (
            "/etc/kubernetes/pki".to_owned(),
            PathBuf::from("/tmp/p/pki"),
        ),
        ("/etc/kubernetes".to_owned(), PathBuf::from("/tmp/p/etc")),
    ];
    let p = ports();
    assert_eq!(
        rewrite("--listen=http://0.0.0.0:2381", &mounts, &p),
        "--listen=http://127.0.0.1:40002"
    );
    assert_eq!(
        rewrite("--secure-port=6443", &mounts, &p),
        "--secure-port=40003"
    );
    assert_eq!(
        rewrite("http://127.0.0.1:23790", &mounts, &p),
        "http://127.0.0.1:23790"
    );
    assert_eq!(rewrite("--x=06443", &mounts, &p), "--x=06443");
    assert_eq!(
        rewrite("--cert=/etc/kubernetes/pki/apiserver.crt", &mounts, &p),
        "--cert=/tmp/p/pki/apiserver.crt"
    );
    assert_eq!(
        rewrite("--conf=/etc/kubernetes/admin.conf", &mounts, &p),
        "--conf=/tmp/p/etc/admin.conf"
    );
    // config files: kubeconfig servers and non-ASCII text survive
    assert_eq!(
        rewrite("server: https://127.0.0.1:6443 # é:6443", &[], &p),
        "server: https://127.0.0.1:40003 # é:40003"
    );
}

#[test]
fn expand_follows_the_kubelet_rules() {
    let env: BTreeMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
    assert_eq!(expand("x=$(A)", &env), "x=1");
    assert_eq!(expand("x=$$(A)", &env), "x=$(A)");
    assert_eq!(expand("x=$(B)", &env), "x=$(B)");
    assert_eq!(expand("$ and $(A", &env), "$ and $(A");
}

#[test]
fn process_plan_expands_env_and_rewrites_for_this_machine() {
    let pod = control_plane_pod();
    let volumes: BTreeMap<String, PathBuf> = [
        ("pki".to_owned(), PathBuf::from("/tmp/p/pki")),
        ("etc".to_owned(), PathBuf::from("/tmp/p/etc")),
        ("data".to_owned(), PathBuf::from("/tmp/v/data")),
    ]
    .into();
    let c = &pod.spec.as_ref().unwrap().containers[1];
    let plan = process_plan(
        &pod,
        c,
        &volumes,
        &ports(),
        &SecretValues::new(),
        &Peers::new(),
    )
    .unwrap();
    assert_eq!(plan.program, "kube-apiserver");
    assert_eq!(
        plan.args,
        [
            "--advertise-address=127.0.0.1",
            "--secure-port=40003",
            "--etcd-servers=http://127.0.0.1:40001",
            "--tls-cert-file=/tmp/p/pki/apiserver.crt",
            "--literal=$(POD_IP)",
            "--unknown=$(NOPE)",
        ]
    );
    assert_eq!(plan.env["NS"], "vc-a");
    assert_eq!(plan.env["HOSTNAME"], "a-cp-0");
    let etcd = &pod.spec.as_ref().unwrap().containers[0];
    let plan = process_plan(
        &pod,
        etcd,
        &volumes,
        &ports(),
        &SecretValues::new(),
        &Peers::new(),
    )
    .unwrap();
    assert_eq!(plan.args[2], "--data-dir=/tmp/v/data/etcd");
}

#[test]
fn process_plan_says_what_it_cannot_run() {
    let pod = control_plane_pod();
    let c = &pod.spec.as_ref().unwrap().containers[1];
    let err = process_plan(
        &pod,
        c,
        &BTreeMap::new(),
        &ports(),
        &SecretValues::new(),
        &Peers::new(),
    )
    .unwrap_err();
    assert!(err.contains("mounts volume \"pki\""), "{err}");
    let mut no_cmd = c.clone();
    no_cmd.command = None;
    no_cmd.volume_mounts = None;
    let err = process_plan(
        &pod,
        &no_cmd,
        &BTreeMap::new(),
        &ports(),
        &SecretValues::new(),
        &Peers::new(),
    )
    .unwrap_err();
    assert!(err.contains("has no command"), "{err}");
}

#[test]
fn http_probe_resolves_named_ports_to_local_ones() {
    let pod = control_plane_pod();
    let c = &pod.spec.as_ref().unwrap().containers[1];
    let probe = http_probe(c, c.readiness_probe.as_ref().unwrap(), &ports()).unwrap();
    assert_eq!(
        probe,
        HttpProbe {
            https: true,
            port: 40003,
            path: "/readyz".into()
        }
    );
    let unmapped = http_probe(c, c.readiness_probe.as_ref().unwrap(), &BTreeMap::new());
    assert_eq!(unmapped, None);
}

#[test]
fn pod_status_is_ready_only_when_every_container_is() {
    let running = |name: &str, ready: bool| ContainerState {
        name: name.into(),
        image: "i".into(),
        started_at: Some("t0".into()),
        ready,
        restarts: 0,
        waiting: None,
        last_exit: None,
    };
    let s = pod_status(&[running("a", true), running("b", false)], "t0", "t1");
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["podIP"], "127.0.0.1");
    let ready = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False");
    let s2 = pod_status(&[running("a", true), running("b", true)], "t0", "t2");
    assert!(status_changed(&s, &s2));
    let s3 = pod_status(&[running("a", true), running("b", true)], "t0", "t3");
    assert!(!status_changed(&s2, &s3), "only transition times differ");
    let mut waiting = running("c", false);
    waiting.started_at = None;
    waiting.waiting = Some(("NoLocalProgram".into(), "no kine here".into()));
    waiting.last_exit = Some((1, "t1".into()));
    waiting.restarts = 2;
    let s = pod_status(&[waiting], "t0", "t1");
    let c = &s["containerStatuses"][0];
    assert_eq!(c["state"]["waiting"]["reason"], "NoLocalProgram");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(c["restartCount"], 2);
}

#[test]
fn environment_takes_secret_keys_the_runner_read() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "n"},
        "spec": {"containers": [{"name": "kine", "command": ["kine"], "env": [
            {"name": "KINE_ENDPOINT", "valueFrom": {"secretKeyRef": {"name": "db", "key": "dsn"}}},
            {"name": "ECHO", "value": "$(KINE_ENDPOINT)"},
            {"name": "ABSENT", "valueFrom": {"secretKeyRef": {"name": "db", "key": "other", "optional": true}}},
        ]}]}
    }))
    .unwrap();
    let secrets: SecretValues = [(
        ("db".to_owned(), "dsn".to_owned()),
        "postgres://x".to_owned(),
    )]
    .into_iter()
    .collect();
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let env = environment(&pod, c, &secrets);
    assert_eq!(env["KINE_ENDPOINT"], "postgres://x");
    assert_eq!(env["ECHO"], "postgres://x");
    assert!(!env.contains_key("ABSENT"));
}

#[test]
fn peers_named_through_a_headless_service_become_their_local_ports() {
    let arg = "--initial-cluster=a-0=https://a-0.a.tenants.svc:2380,a-1=https://a-1.a.tenants.svc.cluster.local:2380,x=https://a-2.a.other.svc:2380";
    assert_eq!(
        peer_names(arg, "tenants"),
        ["a-0".to_owned(), "a-1".to_owned()].into()
    );
    let peers: Peers = [
        ("a-0".to_owned(), [(2380, 41000)].into()),
        ("a-1".to_owned(), [(2380, 41001)].into()),
    ]
    .into();
    assert_eq!(
        rewrite_peers(arg, "tenants", &peers),
        "--initial-cluster=a-0=https://127.0.0.1:41000,a-1=https://127.0.0.1:41001,x=https://a-2.a.other.svc:2380"
    );
    // no port, an unknown pod or port, a longer name: left alone
    for same in [
        "https://a-0.a.tenants.svc",
        "https://a-9.a.tenants.svc:2380",
        "https://a-0.a.tenants.svc:2379",
        "https://a-0.a.tenants.svcx:2380",
        "https://a-0.b.a.tenants.svc:2380",
    ] {
        assert_eq!(rewrite_peers(same, "tenants", &peers), same);
    }
}
