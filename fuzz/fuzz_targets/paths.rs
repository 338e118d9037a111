//! Request routing on paths a tenant controls: the subresource proxy's and the kubelet proxy's
//! (kvtenant-kubevirt-sync), and the webhook server's (kvtenant-webhooks). Whatever the path,
//! a call that is routed names a tenant namespace and objects by plain names, and the host
//! path built from it stays under the given host namespace. The input: a method byte, then the
//! path, then `?` and the query.
#![no_main]

use http::Method;
use kvtenant_kubevirt_sync::proxy::kubelet::route as kubelet;
use kvtenant_kubevirt_sync::proxy::route;
use kvtenant_webhooks::paths;
use libfuzzer_sys::fuzz_target;

fn plain(s: &str) -> bool {
    !s.is_empty()
        && !s.contains('/')
        && !s.contains('%')
        && s != "."
        && s != ".."
        && !s.contains("..")
}

fuzz_target!(|data: &[u8]| {
    let Some((m, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let host_ns = "tenants-0a1b02-t1-default";

    if let route::Route::Call(c) = route::parse(path) {
        assert!(plain(&c.namespace), "{path}");
        if let Some(n) = &c.name {
            assert!(plain(n), "{path}");
        }
        let host = c.host_path(host_ns);
        let prefix = format!(
            "/apis/subresources.kubevirt.io/{}/namespaces/{host_ns}/",
            c.version
        );
        assert!(host.starts_with(&prefix), "{host}");
        assert!(!host.split('/').any(|s| s == ".." || s == "."), "{host}");
        let _ = (c.rbac_resource(), c.metric_label());
    }

    let method = match m % 4 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        _ => Method::DELETE,
    };
    if let kubelet::Route::Pod(c) = kubelet::parse(&method, path, query) {
        assert!(plain(&c.namespace) && plain(&c.pod), "{path}");
        let host = c.host_path(host_ns);
        let prefix = format!("/api/v1/namespaces/{host_ns}/pods/{}/", c.pod);
        assert!(host.starts_with(&prefix), "{host}");
        let (p, _) = host.split_once('?').unwrap_or((&host, ""));
        assert_eq!(p.split('/').count(), 8, "{host}");
    }

    if let Ok(tp) = paths::parse(path) {
        assert!(plain(&tp.vc_uid) && plain(&tp.token), "{path}");
        if let paths::Route::Host {
            configuration,
            webhook,
            ..
        } = &tp.route
        {
            assert!(plain(configuration) && plain(webhook), "{path}");
        }
    }
});
