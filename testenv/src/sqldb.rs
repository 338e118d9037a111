//! Real SQL servers on 127.0.0.1 for tests of kine's external-database datastore: PostgreSQL
//! and MariaDB (MySQL's protocol), from Debian's `postgresql` and `mariadb-server` packages
//! (`.ci/run` installs them when missing).
//!
//! Each [`Server`] is a fresh database cluster in a temporary directory with password
//! authentication for user [`USER`], served on a free port until it is dropped. PostgreSQL
//! refuses to run as root, so as root it runs as the package's `postgres` user.

use std::fs;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::Managed;

/// Errors starting PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin: \
         install Debian's postgresql package (apt-get install postgresql; .ci/run does)"
    )]
    NotInstalled,
    #[error(
        "MariaDB server binaries ({0}) not found: install Debian's mariadb-server package \
         (apt-get install mariadb-server; .ci/run does)"
    )]
    MariaDbNotInstalled(String),
    #[error("running as root, but there is no 'postgres' user to run PostgreSQL as: {0}")]
    NoUser(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {output}")]
    Command { what: String, output: String },
    #[error("{server} did not accept connections on 127.0.0.1:{port} within {secs} s; log:\n{log}")]
    NotReady {
        server: &'static str,
        port: u16,
        secs: u64,
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The user the tests connect as (all rights).
pub const USER: &str = "kvtenant";

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    MariaDb,
}

/// A running SQL server; stopped and its data removed on drop.
pub struct Server {
    kind: Kind,
    /// Whether it takes TLS connections only.
    tls: bool,
    /// The client certificate and key files [`Server::query`] presents, when the server wants
    /// client certificates.
    client_files: Option<(PathBuf, PathBuf)>,
    port: u16,
    password: String,
    process: Managed,
    // dropped after the process (fields drop in order)
    dir: tempfile::TempDir,
}

fn run(what: &str, cmd: &mut Command) -> Result<(), Error> {
    let out = cmd.output().map_err(io(format!("running {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        what: what.into(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// The directory with `initdb` and `postgres`: `pg_config --bindir` when it has them, else the
/// newest `/usr/lib/postgresql/<major>/bin`.
pub fn bin_dir() -> Result<PathBuf, Error> {
    let has_server = |d: &Path| d.join("initdb").exists() && d.join("postgres").exists();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| Error::NotInstalled)?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, d)| has_server(d))
        .collect();
    majors.sort();
    majors.pop().map(|(_, d)| d).ok_or(Error::NotInstalled)
}

/// `(uid, gid)` of the `postgres` user when running as root (PostgreSQL refuses root).
fn run_as() -> Result<Option<(u32, u32)>, Error> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(io("reading /etc/passwd"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| Error::NoUser("no such line in /etc/passwd".into()))
}

/// A server's TLS for its clients: the CA that signed its certificate (PEM) and, when it wants
/// client certificates, one it accepts (CN [`USER`]).
pub struct Tls {
    pub ca: String,
    pub client: Option<crate::pki::CertKey>,
}

/// What a server's TLS asks of clients.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    Off,
    /// TLS connections only.
    Server,
    /// TLS connections with a client certificate from the server's CA only.
    ClientCert,
}

/// Files of a server's TLS in `dir` (owned by `owner`): `ca.crt`, `server.crt`, `server.key`
/// and with client certificates `client.crt`, `client.key`.
struct TlsFiles {
    tls: Tls,
    ca: PathBuf,
    crt: PathBuf,
    key: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

fn tls_files(dir: &Path, owner: Option<(u32, u32)>, mode: TlsMode) -> Result<TlsFiles, Error> {
    let pki = |what: &'static str| move |e: rcgen::Error| io(what)(std::io::Error::other(e));
    let ca = crate::pki::Ca::new("kvtenant-test-database-ca").map_err(pki("making a CA"))?;
    let server = ca
        .issue_server("database", &["127.0.0.1", "localhost"])
        .map_err(pki("issuing a certificate"))?;
    let client = match mode {
        TlsMode::ClientCert => Some(
            ca.issue_client(USER, &[])
                .map_err(pki("issuing a client certificate"))?,
        ),
        _ => None,
    };
    let write = |name: &str, pem: &str| -> Result<PathBuf, Error> {
        let path = dir.join(name);
        fs::write(&path, pem).map_err(io(format!("writing {name}")))?;
        // servers and libpq refuse keys others may read
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io(format!("chmod {name}")))?;
        if let Some((uid, gid)) = owner {
            chown(&path, Some(uid), Some(gid)).map_err(io(format!("chown {name}")))?;
        }
        Ok(path)
    };
    let client_files = match &client {
        Some(c) => Some((
            write("client.crt", &c.cert_pem)?,
            write("client.key", &c.key_pem)?,
        )),
        None => None,
    };
    Ok(TlsFiles {
        ca: write("ca.crt", ca.cert_pem())?,
        crt: write("server.crt", &server.cert_pem)?,
        key: write("server.key", &server.key_pem)?,
        client: client_files,
        tls: Tls {
            ca: ca.cert_pem().to_owned(),
            client,
        },
    })
}

impl Server {
    /// A fresh PostgreSQL cluster on a free port of 127.0.0.1 (a few seconds).
    pub fn postgres() -> Result<Self, Error> {
        Self::postgres_with(TlsMode::Off).map(|(s, _)| s)
    }

    /// A fresh PostgreSQL cluster that accepts TLS connections only, with a server certificate
    /// for 127.0.0.1 from a CA of its own; returns the CA certificate (PEM) clients verify it
    /// with.
    pub fn postgres_tls() -> Result<(Self, String), Error> {
        let (server, tls) = Self::postgres_with(TlsMode::Server)?;
        Ok((server, tls.map(|t| t.ca).unwrap_or_default()))
    }

    /// A fresh PostgreSQL cluster that authenticates with client certificates over TLS only
    /// (`hostssl ... cert`: the certificate's CN is the user, no password).
    pub fn postgres_client_certs() -> Result<(Self, Tls), Error> {
        let (server, tls) = Self::postgres_with(TlsMode::ClientCert)?;
        tls.map(|t| (server, t))
            .ok_or_else(|| io("TLS")(std::io::Error::other("no TLS files")))
    }

    fn postgres_with(mode: TlsMode) -> Result<(Self, Option<Tls>), Error> {
        let bin = bin_dir()?;
        let owner = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("kvtenant-postgres-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let data = dir.path().join("data");
        let pwfile = dir.path().join("password");
        let password = format!("pw-{}", std::process::id());
        fs::write(&pwfile, &password).map_err(io("writing the password file"))?;
        if let Some((uid, gid)) = owner {
            for p in [dir.path(), &pwfile] {
                chown(p, Some(uid), Some(gid)).map_err(io(format!("chown {}", p.display())))?;
            }
        }
        let command = |program: &str| {
            let mut cmd = Command::new(bin.join(program));
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
            }
            cmd.env("LC_ALL", "C.UTF-8");
            cmd
        };
        run(
            "initdb",
            command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    USER,
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
        )?;
        let port = crate::controlplane::free_port().map_err(io("picking a port"))?;
        let mut cmd = command("postgres");
        cmd.arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .arg("-k")
            .arg(dir.path())
            // test data: durability is not the point, speed is
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"]);
        let files = match mode {
            TlsMode::Off => None,
            _ => Some(tls_files(dir.path(), owner, mode)?),
        };
        if let Some(f) = &files {
            // TLS or nothing, over TCP; with client certificates, they are the authentication
            let method = if mode == TlsMode::ClientCert {
                "cert"
            } else {
                "scram-sha-256"
            };
            fs::write(
                data.join("pg_hba.conf"),
                format!(
                    "local all all scram-sha-256\n\
                     hostssl all all 127.0.0.1/32 {method}\n\
                     hostnossl all all 127.0.0.1/32 reject\n"
                ),
            )
            .map_err(io("writing pg_hba.conf"))?;
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", f.crt.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", f.key.display()))
                .arg("-c")
                .arg(format!("ssl_ca_file={}", f.ca.display()));
        }
        let mut server = Self::spawn(Kind::Postgres, cmd, port, password, dir)?;
        server.tls = files.is_some();
        Ok(match files {
            Some(f) => {
                server.client_files = f.client;
                (server, Some(f.tls))
            }
            None => (server, None),
        })
    }

    /// A fresh MariaDB server on a free port of 127.0.0.1 (a few seconds).
    pub fn mariadb() -> Result<Self, Error> {
        Self::mariadb_with(TlsMode::Off).map(|(s, _)| s)
    }

    /// A fresh MariaDB server that takes TLS connections only (`require_secure_transport`), and
    /// from user [`USER`] only with a client certificate from its CA (`REQUIRE X509`) besides
    /// the password.
    pub fn mariadb_client_certs() -> Result<(Self, Tls), Error> {
        let (server, tls) = Self::mariadb_with(TlsMode::ClientCert)?;
        tls.map(|t| (server, t))
            .ok_or_else(|| io("TLS")(std::io::Error::other("no TLS files")))
    }

    fn mariadb_with(mode: TlsMode) -> Result<(Self, Option<Tls>), Error> {
        let (install, server) = (
            Path::new("/usr/bin/mariadb-install-db"),
            Path::new("/usr/sbin/mariadbd"),
        );
        for p in [install, server] {
            if !p.exists() {
                return Err(Error::MariaDbNotInstalled(p.display().to_string()));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("kvtenant-mariadb-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let data = dir.path().join("data");
        // as root, mariadbd runs as root when told so; otherwise as whoever runs the test
        let user = if nix::unistd::Uid::effective().is_root() {
            "root".to_owned()
        } else {
            nix::unistd::User::from_uid(nix::unistd::Uid::effective())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "mysql".into())
        };
        run(
            "mariadb-install-db",
            Command::new(install)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--user={user}"))
                .args(["--auth-root-authentication-method=socket", "--skip-test-db"]),
        )?;
        let password = format!("pw-{}", std::process::id());
        let init = dir.path().join("init.sql");
        fs::write(
            &init,
            format!(
                "CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{password}'{require};\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1';\n",
                require = if mode == TlsMode::ClientCert {
                    " REQUIRE X509"
                } else {
                    ""
                }
            ),
        )
        .map_err(io("writing the init file"))?;
        let port = crate::controlplane::free_port().map_err(io("picking a port"))?;
        let mut cmd = Command::new(server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--init-file={}", init.display()))
            .arg(format!("--user={user}"))
            .args(["--bind-address=127.0.0.1", &format!("--port={port}")])
            .args([
                "--skip-name-resolve",
                "--skip-log-bin",
                "--max-connections=200",
            ])
            // test data: durability is not the point, speed is
            .args(["--innodb-flush-log-at-trx-commit=0", "--sync-binlog=0"]);
        let files = match mode {
            TlsMode::Off => None,
            _ => Some(tls_files(dir.path(), None, mode)?),
        };
        if let Some(f) = &files {
            cmd.arg(format!("--ssl-ca={}", f.ca.display()))
                .arg(format!("--ssl-cert={}", f.crt.display()))
                .arg(format!("--ssl-key={}", f.key.display()))
                .arg("--require-secure-transport=ON");
        }
        let mut server = Self::spawn(Kind::MariaDb, cmd, port, password, dir)?;
        server.tls = files.is_some();
        Ok(match files {
            Some(f) => {
                server.client_files = f.client;
                (server, Some(f.tls))
            }
            None => (server, None),
        })
    }

    fn spawn(
        kind: Kind,
        cmd: Command,
        port: u16,
        password: String,
        dir: tempfile::TempDir,
    ) -> Result<Self, Error> {
        let name = match kind {
            Kind::Postgres => "postgres",
            Kind::MariaDb => "mariadbd",
        };
        let log = dir.path().join(format!("{name}.log"));
        fs::write(&log, "").map_err(io("creating the log"))?;
        let process =
            Managed::spawn(name, cmd, &log, None).map_err(io(format!("starting {name}")))?;
        let server = Self {
            kind,
            tls: false,
            client_files: None,
            port,
            password,
            process,
            dir,
        };
        server.wait_ready(Duration::from_secs(60))?;
        Ok(server)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let ready_line = match self.kind {
            Kind::Postgres => "database system is ready to accept connections",
            Kind::MariaDb => "ready for connections",
        };
        while start.elapsed() < timeout {
            let log = fs::read_to_string(self.process.log()).unwrap_or_default();
            if log.contains(ready_line)
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::NotReady {
            server: match self.kind {
                Kind::Postgres => "PostgreSQL",
                Kind::MariaDb => "MariaDB",
            },
            port: self.port,
            secs: timeout.as_secs(),
            log: self.process.log_tail(30),
        })
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// kine's DSN for `database` (kine creates it when missing), as user [`USER`] with its
    /// password; without TLS unless the server takes TLS only.
    pub fn dsn(&self, database: &str) -> String {
        let (pw, port) = (&self.password, self.port);
        match self.kind {
            // with TLS, kine picks verify-full when it is given the CA (--ca-file)
            Kind::Postgres if self.tls => {
                format!("postgres://{USER}:{pw}@127.0.0.1:{port}/{database}")
            }
            Kind::Postgres => {
                format!("postgres://{USER}:{pw}@127.0.0.1:{port}/{database}?sslmode=disable")
            }
            Kind::MariaDb => format!("mysql://{USER}:{pw}@tcp(127.0.0.1:{port})/{database}"),
        }
    }

    /// Runs SQL with the server's client against `database` and returns its unaligned output
    /// (one row per line, columns tab-separated).
    pub fn query(&self, database: &str, sql: &str) -> Result<String, Error> {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Postgres => {
                let psql = bin_dir()?.join("psql");
                let mut cmd = Command::new(if psql.exists() {
                    psql
                } else {
                    PathBuf::from("psql")
                });
                cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", USER])
                    .args(["-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
                    .env("PGPASSWORD", &self.password);
                if let Some((crt, key)) = &self.client_files {
                    cmd.env("PGSSLMODE", "require")
                        .env("PGSSLCERT", crt)
                        .env("PGSSLKEY", key);
                }
                cmd
            }
            Kind::MariaDb => {
                let mut cmd = Command::new("mariadb");
                cmd.arg("--no-defaults")
                    .args(["-h", "127.0.0.1", "-P", &port, "-u", USER]);
                if self.tls {
                    cmd.arg("--ssl");
                }
                if let Some((crt, key)) = &self.client_files {
                    cmd.arg(format!("--ssl-cert={}", crt.display()))
                        .arg(format!("--ssl-key={}", key.display()));
                }
                cmd.args(["-N", "-B", "-e", sql, database])
                    .env("MYSQL_PWD", &self.password);
                cmd
            }
        };
        let out = cmd.output().map_err(io("running the SQL client"))?;
        if !out.status.success() {
            return Err(Error::Command {
                what: format!("psql {sql:?}"),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The directory of the server's data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

#[cfg(test)]
mod tests;
