//! The tenant namespace → host namespace mapping (DESIGN.md §2 "Naming").
//!
//! Tenant namespace `N` of VirtualCluster `V`, which lives in host namespace `H` and has uid `U`,
//! maps to one host namespace; object names inside stay unchanged. See [`host_namespace`] for
//! the format and why it is injective. The mapping is stable: changing its output for existing
//! inputs orphans every tenant's host namespaces, so golden values pin it in the tests.

use sha2::{Digest, Sha256};

/// The longest namespace name Kubernetes accepts (a DNS-1123 label).
pub const MAX_NAMESPACE_LEN: usize = 63;

/// Length of the uid digest field (`<d>` in [`host_namespace`]).
pub const UID_DIGEST_LEN: usize = 6;

/// Hex digits of the hash at the end of a hashed name (64 bits; see [`host_namespace`]).
const HASH_LEN: usize = 16;
/// How much of `H` a hashed name keeps.
const HASHED_HOST_NS_MAX: usize = 16;
/// Domain separation for the hash of a hashed name; bump only with a migration.
const HASH_DOMAIN: &[u8] = b"kvtenant.io/host-namespace/v1";

/// The host namespace of tenant namespace `tenant_ns` of the VirtualCluster named `vc_name` in
/// host namespace `vc_host_ns` with uid `vc_uid`.
///
/// # Format
///
/// Readable form (used whenever possible): `<H>-<d>-<V>-<N>`, where `<d>` is 6 lowercase hex
/// digits: the first 4 hex digits of SHA-256(`vc_uid`) followed by the length of `V` as 2 hex
/// digits. Example: `kvtenant-system-1c4e05-alpha-default` for namespace `default` of
/// VirtualCluster `alpha` (uid `6f1c1c0e-2b7a-…`) in `kvtenant-system`. It is used when `H`,
/// `V` and `N` are valid DNS-1123 labels, the result is at most 63 characters, and the result
/// contains exactly one *digest marker*: a `-`, 6 characters of `[0-9a-f]`, a `-` (counting
/// overlapping ones). The length of `V` inside `<d>` is what makes the name decodable (a plain
/// `H-<uid hash>-V-N` is ambiguous as soon as `V` or `N` contain a `-`).
///
/// Hashed form (everything else; mostly names over 63 characters):
/// `<H'>-<d>-<R'>-<h6>-<h10>`, where `H'` is `H` cut to 16 characters, `R'` is `<V>-<N>` cut to
/// what fits in 63 (dropped with its `-` when nothing fits), and `<h6><h10>` are the first 16 hex
/// digits of SHA-256 over a length-prefixed encoding of (`H`, `vc_uid`, `V`, `N`). Inputs that
/// are not DNS-1123 labels are lowercased, other characters replaced by `-`, before being cut.
///
/// The result is always a valid DNS-1123 label (a namespace name) of at most 63 characters, and
/// depends only on the arguments.
///
/// # Why two tenants never share a host namespace
///
/// 1. *Readable names are uniquely decodable.* A readable name `S` has exactly one digest
///    marker, and the one at position `|H|` (the `-<d>-` we put there) is a marker, so it is
///    that one: `H` is everything before it and `<d>` the 6 hex digits in it. The last two digits
///    of `<d>` give `|V|`, so `V` is the next `|V|` characters and `N` is what follows the next
///    `-`. Hence two readable names are equal only if their `H`, `V`, `N` and uid digest are all
///    equal. Two different VirtualClusters that exist at the same time differ in `(H, V)` (names
///    are unique within a namespace), so they never share a readable name, however their
///    namespaces are named (dashes, hex runs and all). The same VirtualCluster maps different
///    tenant namespaces to different names since `N` differs. The only readable collision left is
///    between two *incarnations* of one VirtualCluster (deleted and recreated with the same name
///    and namespace) whose uids share 16 bits of digest; such namespaces are never live for both
///    at once if the controller deletes the host namespaces before releasing its finalizer, and
///    the `virtualcluster-uid` label tells them apart regardless (see
///    [`crate::labels::HostNamespaceOwner::is_owned_by`]).
/// 2. *Hashed names never equal readable names*: a hashed name contains at least two digest
///    markers (`-<d>-` and `-<h6>-`), a readable name exactly one.
/// 3. *Hashed names collide only on a hash collision*: equal hashed names have equal 64-bit
///    SHA-256 prefixes of injective encodings of the inputs; the inputs include `vc_uid`, so
///    another tenant cannot compute a victim's name without its uid, and even with it needs
///    about 2^64 SHA-256 evaluations to hit it.
///
/// Hence distinct `(vc uid, tenant namespace)` pairs of live VirtualClusters map to distinct
/// host namespaces (exactly for readable names, up to a 2^-64 hash collision for hashed ones).
pub fn host_namespace(vc_host_ns: &str, vc_name: &str, vc_uid: &str, tenant_ns: &str) -> String {
    let digest = uid_digest(vc_uid, vc_name.len());
    if is_dns1123_label(vc_host_ns) && is_dns1123_label(vc_name) && is_dns1123_label(tenant_ns) {
        let readable = format!("{vc_host_ns}-{digest}-{vc_name}-{tenant_ns}");
        if readable.len() <= MAX_NAMESPACE_LEN && count_digest_markers(&readable) == 1 {
            return readable;
        }
    }
    hashed(vc_host_ns, vc_name, vc_uid, tenant_ns, &digest)
}

/// The `<d>` field of [`host_namespace`]: 4 hex digits of SHA-256(`vc_uid`) and the length of
/// the VirtualCluster name as 2 hex digits (names longer than 255 only occur in hashed names,
/// where the field is informative only).
pub fn uid_digest(vc_uid: &str, vc_name_len: usize) -> String {
    let hash = Sha256::digest(vc_uid.as_bytes());
    format!(
        "{:02x}{:02x}{:02x}",
        hash[0],
        hash[1],
        vc_name_len.min(0xff)
    )
}

fn hashed(h: &str, v: &str, uid: &str, n: &str, digest: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(HASH_DOMAIN);
    for part in [h, uid, v, n] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let hash = hex(&hasher.finalize()[..HASH_LEN / 2]);
    let (h6, h10) = hash.split_at(UID_DIGEST_LEN);

    let mut host = sanitize(h);
    host.truncate(HASHED_HOST_NS_MAX);
    let host = host.trim_matches('-');
    let host = if host.is_empty() { "ns" } else { host };

    // <host>-<digest>-[<rest>-]<h6>-<h10>
    let fixed = host.len() + 1 + UID_DIGEST_LEN + 1 + UID_DIGEST_LEN + 1 + (HASH_LEN - 6);
    let mut rest = sanitize(&format!("{v}-{n}"));
    rest.truncate(MAX_NAMESPACE_LEN.saturating_sub(fixed + 1));
    let rest = rest.trim_matches('-');

    if rest.is_empty() {
        format!("{host}-{digest}-{h6}-{h10}")
    } else {
        format!("{host}-{digest}-{rest}-{h6}-{h10}")
    }
}

/// Lowercases and replaces every character outside `[a-z0-9-]` by `-`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Number of positions `i` where `s[i..i + 8]` is `-`, 6 characters of `[0-9a-f]`, `-`.
fn count_digest_markers(s: &str) -> usize {
    s.as_bytes()
        .windows(UID_DIGEST_LEN + 2)
        .filter(|w| {
            w[0] == b'-'
                && w[UID_DIGEST_LEN + 1] == b'-'
                && w[1..=UID_DIGEST_LEN]
                    .iter()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        })
        .count()
}

/// Whether `s` is a DNS-1123 label (RFC 1123): 1 to 63 characters of `[a-z0-9-]`, starting and
/// ending with a letter or digit. Namespace names are DNS-1123 labels.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= MAX_NAMESPACE_LEN
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
}

/// Whether `s` is a DNS-1123 subdomain: at most 253 characters of DNS-1123 labels joined by
/// dots. Most object names (Pods, claims, Secrets) are.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests;
