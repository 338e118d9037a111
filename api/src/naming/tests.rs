use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const UID_A: &str = "6f1c1c0e-2b7a-4d53-9a0e-3c5d7e9f1a2b";
const UID_B: &str = "0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b";

/// Pinned outputs (cross-checked with an independent Python implementation of the documented
/// format): the mapping must never change for existing inputs (it would orphan every
/// tenant's host namespaces). If one of these fails, the change is a breaking migration.
#[test]
fn golden_values() {
    let cases = [
        (
            ("kvtenant-system", "alpha", UID_A, "default"),
            "kvtenant-system-1c4e05-alpha-default",
        ),
        (
            ("tenants", "team-a", UID_A, "kube-system"),
            "tenants-1c4e06-team-a-kube-system",
        ),
        (
            ("tenants", "team-a", UID_B, "kube-system"),
            "tenants-50ef06-team-a-kube-system",
        ),
        (("h", "v", "", "n"), "h-e3b001-v-n"),
        // A tenant namespace with a digest marker in it: hashed form.
        (
            ("tenants", "team-a", UID_A, "app-123456-x"),
            "tenants-1c4e06-team-a-app-123456-x-49be09-c676ecb281",
        ),
        // Too long for the readable form.
        (
            (
                "kvtenant-virtual-clusters",
                "engineering-sandbox",
                UID_A,
                "my-very-long-application-namespace",
            ),
            "kvtenant-virtual-1c4e13-engineering-sandbox-m-b52853-2fdf77fcde",
        ),
        // Not DNS-1123 labels (never produced by the API, but the output stays valid).
        (
            ("Tenants", "Team_A", UID_B, "ns.with.dots"),
            "tenants-50ef06-team-a-ns-with-dots-ecde36-425441dbb1",
        ),
        (("---", "", UID_B, ""), "ns-50ef00-6cb589-039c222e09"),
    ];
    for ((h, v, u, n), want) in cases {
        assert_eq!(
            host_namespace(h, v, u, n),
            want,
            "host_namespace({h:?}, {v:?}, {u:?}, {n:?})"
        );
    }
}

#[test]
fn readable_form_layout() {
    let d = uid_digest(UID_A, "alpha".len());
    assert_eq!(d.len(), UID_DIGEST_LEN);
    assert!(d.ends_with("05"));
    assert_eq!(
        host_namespace("kvtenant-system", "alpha", UID_A, "default"),
        format!("kvtenant-system-{d}-alpha-default")
    );
}

#[test]
fn dns1123_label_check() {
    for ok in ["a", "0", "a-b", "a--b", "kube-system", &"a".repeat(63)] {
        assert!(is_dns1123_label(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "ä"] {
        assert!(!is_dns1123_label(bad), "{bad}");
    }
}

/// Decodes a readable name back into (H, digest, V, N), as the injectivity argument in
/// [`host_namespace`]'s documentation does.
fn decode_readable(s: &str) -> Option<(String, String, String, String)> {
    if count_digest_markers(s) != 1 {
        return None;
    }
    let i = (0..s.len().saturating_sub(7)).find(|&i| count_digest_markers(&s[i..i + 8]) == 1)?;
    let h = &s[..i];
    let d = &s[i + 1..i + 7];
    let len = usize::from_str_radix(&d[4..], 16).ok()?;
    let v = s.get(i + 8..i + 8 + len)?;
    let rest = s.get(i + 8 + len..)?;
    let n = rest.strip_prefix('-')?;
    Some((h.into(), d.into(), v.into(), n.into()))
}

/// A DNS-1123 label built from pieces that stress the format: dashes, digest-like hex runs,
/// digest markers, and plain words.
fn label() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-z0-9]{1,8}",
        "[0-9a-f]{6}",
        "[0-9a-f]{4}0[0-9a-f]",
        Just("a".to_owned()),
        Just("kube".to_owned()),
        Just("system".to_owned()),
    ];
    let sep = prop_oneof![Just("-"), Just("--"), Just("")];
    (piece.clone(), prop::collection::vec((sep, piece), 0..6)).prop_map(|(first, rest)| {
        let mut s = first;
        for (sep, p) in rest {
            s.push_str(sep);
            s.push_str(&p);
        }
        s.truncate(MAX_NAMESPACE_LEN);
        let s = s.trim_end_matches('-').to_owned();
        if s.is_empty() { "x".to_owned() } else { s }
    })
}

fn uid() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        Just(UID_A.to_owned()),
        Just(UID_B.to_owned()),
        ".{0,40}",
    ]
}

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![label(), ".{0,80}", "[A-Za-z0-9._-]{0,100}"]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any input gives a namespace name: a DNS-1123 label of at most 63 characters, and the
    /// same one every time.
    #[test]
    fn always_a_valid_label(h in any_string(), v in any_string(), u in uid(), n in any_string()) {
        let s = host_namespace(&h, &v, &u, &n);
        prop_assert!(is_dns1123_label(&s), "{s:?}");
        prop_assert!(s.len() <= MAX_NAMESPACE_LEN);
        prop_assert_eq!(&s, &host_namespace(&h, &v, &u, &n));
    }

    /// Readable names decode back to their inputs; hashed names have two digest markers.
    #[test]
    fn readable_names_decode(h in label(), v in label(), u in uid(), n in label()) {
        let s = host_namespace(&h, &v, &u, &n);
        match decode_readable(&s) {
            Some(decoded) => {
                prop_assert_eq!(decoded, (h.clone(), uid_digest(&u, v.len()), v.clone(), n.clone()));
            }
            None => prop_assert!(count_digest_markers(&s) >= 2, "{s:?}"),
        }
    }

    /// Two inputs share a host namespace only if they agree on H, V, N and the uid digest
    /// (two incarnations of one VirtualCluster; see the documentation).
    #[test]
    fn injective(
        a in (label(), label(), uid(), label()),
        b in (label(), label(), uid(), label()),
    ) {
        let sa = host_namespace(&a.0, &a.1, &a.2, &a.3);
        let sb = host_namespace(&b.0, &b.1, &b.2, &b.3);
        if sa == sb {
            prop_assert_eq!((&a.0, &a.1, &a.3), (&b.0, &b.1, &b.3));
            prop_assert_eq!(uid_digest(&a.2, a.1.len()), uid_digest(&b.2, b.1.len()));
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Adversarial: re-split the output of one tenant at every dash into another (H, V, N)
    /// and try several uids (including ones whose digest appears in the name); none may map to
    /// the same host namespace.
    #[test]
    fn resplitting_the_output_never_collides(h in label(), v in label(), u in uid(), n in label()) {
        let s = host_namespace(&h, &v, &u, &n);
        let dashes: Vec<usize> = s.match_indices('-').map(|(i, _)| i).collect();
        let uids = [u.clone(), UID_A.to_owned(), UID_B.to_owned(), format!("{u}x")];
        for (x, &i) in dashes.iter().enumerate() {
            for &j in &dashes[x + 1..] {
                let (h2, v2, n2) = (&s[..i], &s[i + 1..j], &s[j + 1..]);
                for u2 in &uids {
                    if (h2, v2, n2) == (h.as_str(), v.as_str(), n.as_str()) {
                        continue;
                    }
                    prop_assert_ne!(&host_namespace(h2, v2, u2, n2), &s, "{:?}", (h2, v2, u2, n2));
                }
            }
        }
    }

    /// Adversarial: the classic ambiguities of `H-d-V-N`, moving a dash-separated word across
    /// a boundary, with the same uid (so the digests' hash part agrees).
    #[test]
    fn boundary_shifts_never_collide(h in label(), v in label(), x in label(), u in uid(), n in label()) {
        let base = host_namespace(&h, &v, &u, &format!("{x}-{n}"));
        prop_assert_ne!(&base, &host_namespace(&h, &format!("{v}-{x}"), &u, &n));
        let d = uid_digest(&u, v.len());
        // A VirtualCluster whose host namespace name swallows another one's digest and name.
        prop_assert_ne!(
            &host_namespace(&h, &v, &u, &n),
            &host_namespace(&format!("{h}-{d}-{v}"), &x, &u, &n)
        );
        prop_assert_ne!(
            &host_namespace(&h, &v, &u, &format!("{x}-{d}-{n}")),
            &host_namespace(&format!("{h}-{d}-{v}-{x}"), &v, &u, &n)
        );
    }
}

/// Exhaustive over small words made of tokens that include the uids' own digests: every
/// (H, V, N, uid) maps to a different name.
#[test]
fn exhaustive_small_inputs_are_injective() {
    let uids = [UID_A, UID_B];
    let mut tokens = vec!["a".to_owned(), "0".to_owned(), "abcdef".to_owned()];
    for u in uids {
        for len in [1, 8] {
            tokens.push(uid_digest(u, len));
        }
    }
    let mut words = vec![];
    for t1 in &tokens {
        words.push(t1.clone());
        for t2 in &tokens {
            words.push(format!("{t1}-{t2}"));
        }
    }
    let mut seen: HashMap<String, (usize, usize, usize, usize)> = HashMap::new();
    for (hi, h) in words.iter().enumerate() {
        for (vi, v) in words.iter().enumerate().step_by(3) {
            for (ni, n) in words.iter().enumerate() {
                for (ui, u) in uids.iter().enumerate() {
                    let s = host_namespace(h, v, u, n);
                    assert!(is_dns1123_label(&s));
                    if let Some(prev) = seen.insert(s.clone(), (hi, vi, ni, ui)) {
                        panic!("{s} for both {prev:?} and {:?}", (hi, vi, ni, ui));
                    }
                }
            }
        }
    }
}

#[test]
fn dns1123_subdomain_check() {
    assert!(is_dns1123_subdomain("disk"));
    assert!(is_dns1123_subdomain("a.b-c.d"));
    for bad in ["", "A", "a..b", ".a", "a.", "-a", &"a".repeat(254)] {
        assert!(!is_dns1123_subdomain(bad), "{bad:?}");
    }
}
