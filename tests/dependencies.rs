//! What the `kvtenant` binary links: one rustls crypto provider (ring; aws-lc-rs would make
//! rustls' process default ambiguous) and one reqwest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

/// The distinct `name vX.Y.Z` packages the binary links (normal dependencies).
fn linked(extra: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "kvtenant",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some(format!("{} {}", words.next()?, words.next()?))
        })
        .collect()
}

#[test]
fn one_crypto_provider_and_one_reqwest() {
    for extra in [&[][..], &["--no-default-features"][..]] {
        let deps = linked(extra);
        let named = |n: &str| -> Vec<&String> {
            deps.iter()
                .filter(|d| d.split(' ').next() == Some(n))
                .collect()
        };
        assert_eq!(named("ring").len(), 1, "{extra:?}: {deps:?}");
        assert!(named("aws-lc-rs").is_empty(), "{extra:?}");
        assert!(named("aws-lc-sys").is_empty(), "{extra:?}");
        assert_eq!(
            named("reqwest").len(),
            1,
            "{extra:?}: {:?}",
            named("reqwest")
        );
        assert_eq!(named("rustls").len(), 1, "{extra:?}: {:?}", named("rustls"));
    }
}
