use super::*;

/// Client certificates: a client without one is turned away, one with it gets in.
#[test]
fn postgres_and_mariadb_take_client_certificates_only() {
    let (pg, tls) = Server::postgres_client_certs().unwrap_or_else(|e| panic!("{e}"));
    assert!(tls.client.is_some());
    assert_eq!(
        pg.query(
            "postgres",
            "select ssl and client_dn is not null from pg_stat_ssl where pid = pg_backend_pid()"
        )
        .unwrap(),
        "t"
    );
    let without = Command::new(bin_dir().unwrap().join("psql"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", USER])
        .args(["-d", "postgres", "-c", "select 1"])
        .env("PGPASSWORD", &pg.password)
        .env("PGSSLMODE", "require")
        .output()
        .unwrap();
    assert!(
        !without.status.success(),
        "psql got in without a certificate"
    );

    let (db, _) = Server::mariadb_client_certs().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(db.query("mysql", "select 1").unwrap(), "1");
    let without = Command::new("mariadb")
        .arg("--no-defaults")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &db.port().to_string(),
            "-u",
            USER,
            "--ssl",
        ])
        .args(["-e", "select 1", "mysql"])
        .env("MYSQL_PWD", &db.password)
        .output()
        .unwrap();
    assert!(
        !without.status.success(),
        "mariadb got in without a certificate"
    );
}

/// TLS only: a client that will not use TLS is turned away, one that does gets in.
#[test]
fn postgres_tls_refuses_plain_connections() {
    let (pg, ca) = Server::postgres_tls().unwrap_or_else(|e| panic!("{e}"));
    assert!(ca.contains("BEGIN CERTIFICATE"));
    assert_eq!(
        pg.query(
            "postgres",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
        )
        .unwrap(),
        "t"
    );
    let plain = Command::new(bin_dir().unwrap().join("psql"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", USER])
        .args(["-d", "postgres", "-c", "select 1"])
        .env("PGPASSWORD", &pg.password)
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap();
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("no encryption"),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
}

/// A real MariaDB: SQL runs as the test user, and the DSN names the server.
#[test]
fn mariadb_starts_and_runs_sql() {
    let db = Server::mariadb().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(db.query("mysql", "select 1 + 1").unwrap(), "2");
    assert!(
        db.dsn("kv")
            .ends_with(&format!("@tcp(127.0.0.1:{})/kv", db.port()))
    );
}

/// A real PostgreSQL: password authentication holds (a wrong password is refused) and SQL
/// runs.
#[test]
fn postgres_starts_and_checks_passwords() {
    let pg = Server::postgres().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pg.query("postgres", "select 1 + 1").unwrap(), "2");
    let refused = Command::new(bin_dir().unwrap().join("psql"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", USER])
        .args(["-d", "postgres", "-c", "select 1"])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
