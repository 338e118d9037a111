//! Checks of an external database's Secrets before the control plane is rendered: a missing
//! Secret, key or file is reported in the VirtualCluster's status with what to fix, instead of a
//! pod stuck in ContainerCreating or a kine crash loop.

use k8s_openapi::api::core::v1::Secret;
use kvtenant_api::{ExternalDatabaseSpec, dsn_problem, etcd_keys};

/// What the renderer needs from the TLS Secret: whether it carries a client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatabaseTls {
    pub client_cert: bool,
}

fn has_key(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(key))
        || secret
            .string_data
            .as_ref()
            .is_some_and(|d| d.contains_key(key))
}

fn keys(secret: &Secret) -> String {
    let keys: Vec<&str> = secret
        .data
        .iter()
        .flat_map(|d| d.keys())
        .map(String::as_str)
        .collect();
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(", ")
    }
}

/// Checks the DSN Secret (`dsn`) and, when the spec names one, the TLS Secret (`tls`, `None`
/// when it does not exist); `ns` is the VirtualCluster's namespace. The error says what to fix.
pub fn check(
    ns: &str,
    spec: &ExternalDatabaseSpec,
    dsn: Option<&Secret>,
    tls: Option<&Secret>,
) -> Result<DatabaseTls, String> {
    let r = &spec.dsn_secret_ref;
    let key = r.key_or_default();
    let field = "spec.controlPlane.externalDatabase";
    let Some(dsn) = dsn else {
        return Err(format!(
            "Secret {ns}/{} ({field}.dsnSecretRef) not found: create it with kine's DSN \
             (postgres://... or mysql://...) in key {key:?}",
            r.name
        ));
    };
    let value = dsn
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
    let Some(value) = value else {
        return Err(format!(
            "Secret {ns}/{} has no key {key:?} (it has: {}): put kine's DSN under that key, or \
             set {field}.dsnSecretRef.key",
            r.name,
            keys(dsn)
        ));
    };
    if let Some(problem) = dsn_problem(&value) {
        return Err(format!("Secret {ns}/{} key {key:?}: {problem}", r.name));
    }
    let Some(tls_ref) = &spec.tls_secret_ref else {
        return Ok(DatabaseTls::default());
    };
    let Some(tls) = tls else {
        return Err(format!(
            "Secret {ns}/{} ({field}.tlsSecretRef) not found: create it with the database's CA \
             in key {:?} (and a client certificate in {:?} and {:?} if the database asks for one)",
            tls_ref.name,
            etcd_keys::CA,
            etcd_keys::CERT,
            etcd_keys::KEY
        ));
    };
    if !has_key(tls, etcd_keys::CA) {
        return Err(format!(
            "Secret {ns}/{} has no key {:?} (it has: {}): put the database's CA certificate there",
            tls_ref.name,
            etcd_keys::CA,
            keys(tls)
        ));
    }
    match (has_key(tls, etcd_keys::CERT), has_key(tls, etcd_keys::KEY)) {
        (true, true) => Ok(DatabaseTls { client_cert: true }),
        (false, false) => Ok(DatabaseTls { client_cert: false }),
        _ => Err(format!(
            "Secret {ns}/{} has only one of {:?} and {:?}: a client certificate needs both",
            tls_ref.name,
            etcd_keys::CERT,
            etcd_keys::KEY
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kvtenant_api::{SecretKey, SecretName};

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn spec(key: Option<&str>, tls: bool) -> ExternalDatabaseSpec {
        ExternalDatabaseSpec {
            dsn_secret_ref: SecretKey {
                name: "db".into(),
                key: key.map(str::to_owned),
            },
            tls_secret_ref: tls.then(|| SecretName {
                name: "db-tls".into(),
            }),
        }
    }

    #[test]
    fn a_postgres_or_mysql_dsn_passes() {
        for dsn in [
            "postgres://u:p@db:5432/kv?sslmode=disable",
            "mysql://u:p@tcp(db:3306)/kv",
        ] {
            let s = secret(&[("dsn", dsn)]);
            assert_eq!(
                check("t", &spec(None, false), Some(&s), None),
                Ok(DatabaseTls::default())
            );
        }
        let s = secret(&[("url", "postgres://db/kv")]);
        assert!(check("t", &spec(Some("url"), false), Some(&s), None).is_ok());
    }

    #[test]
    fn missing_secrets_keys_and_bad_dsns_say_what_to_fix() {
        let err = check("t", &spec(None, false), None, None).unwrap_err();
        assert!(
            err.contains("Secret t/db") && err.contains("not found"),
            "{err}"
        );
        let err = check("t", &spec(None, false), Some(&secret(&[("x", "y")])), None).unwrap_err();
        assert!(err.contains("no key \"dsn\" (it has: x)"), "{err}");
        let s = secret(&[("dsn", "sqlite:///tmp/x.db")]);
        let err = check("t", &spec(None, false), Some(&s), None).unwrap_err();
        assert!(
            err.contains("\"sqlite\"") && err.contains("postgres://"),
            "{err}"
        );
        let s = secret(&[("dsn", "db:5432")]);
        let err = check("t", &spec(None, false), Some(&s), None).unwrap_err();
        assert!(err.contains("no scheme"), "{err}");
    }

    #[test]
    fn the_tls_secret_needs_a_ca_and_both_or_neither_client_files() {
        let dsn = secret(&[("dsn", "postgres://db/kv")]);
        let sp = spec(None, true);
        let err = check("t", &sp, Some(&dsn), None).unwrap_err();
        assert!(
            err.contains("Secret t/db-tls") && err.contains("not found"),
            "{err}"
        );
        let err = check("t", &sp, Some(&dsn), Some(&secret(&[("tls.crt", "c")]))).unwrap_err();
        assert!(err.contains("no key \"ca.crt\""), "{err}");
        let ca = secret(&[("ca.crt", "c")]);
        assert_eq!(
            check("t", &sp, Some(&dsn), Some(&ca)),
            Ok(DatabaseTls { client_cert: false })
        );
        let full = secret(&[("ca.crt", "c"), ("tls.crt", "c"), ("tls.key", "k")]);
        assert_eq!(
            check("t", &sp, Some(&dsn), Some(&full)),
            Ok(DatabaseTls { client_cert: true })
        );
        let half = secret(&[("ca.crt", "c"), ("tls.key", "k")]);
        let err = check("t", &sp, Some(&dsn), Some(&half)).unwrap_err();
        assert!(err.contains("needs both"), "{err}");
    }
}
