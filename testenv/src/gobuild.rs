//! Builds a set of Go commands from embedded module files into a cache directory, once per
//! machine: a file lock makes parallel callers wait for one build, a stamp file marks a finished
//! one, and a progress line is printed every 30 s while Go runs (a cold build takes minutes).

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::binaries::{BinariesError, cache_root};

/// How often a running build reports that it is still running.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// One Go module: a directory name and its files (go.mod, go.sum, sources).
pub(crate) struct GoModule {
    pub dir: &'static str,
    pub files: &'static [(&'static str, &'static str)],
}

/// One `go build` in a module directory, writing into the set's `bin/`.
pub(crate) struct GoBuild {
    pub module: &'static str,
    /// What is built, for messages.
    pub what: String,
    /// `-ldflags` value.
    pub ldflags: String,
    /// Package paths (`./cmd/x` for the module's own programs).
    pub packages: Vec<&'static str>,
    /// Output file name when one package is built and Go's default name is wrong (a module
    /// path ending in `/v3` would make a binary named `server`).
    pub output: Option<&'static str>,
}

/// After the builds: run a built program and keep its stdout in a file next to the binaries.
pub(crate) struct Generate {
    pub program: &'static str,
    pub args: Vec<&'static str>,
    pub output: &'static str,
}

/// A set of binaries cached together under `<cache>/<key>/bin`.
pub(crate) struct GoSet {
    /// Start of the cache directory name, e.g. `kubevirt-v1.8.1`.
    pub key_prefix: String,
    /// What the set is, for messages.
    pub label: String,
    pub modules: Vec<GoModule>,
    pub builds: Vec<GoBuild>,
    pub generate: Vec<Generate>,
    /// File names that must exist in `bin/` when the set is complete.
    pub outputs: Vec<&'static str>,
}

impl GoSet {
    /// Cache key: the prefix plus a hash of everything that goes into the build.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for m in &self.modules {
            h.update(m.dir.as_bytes());
            for (name, content) in m.files {
                h.update(name.as_bytes());
                h.update([0]);
                h.update(content.as_bytes());
                h.update([0]);
            }
        }
        for b in &self.builds {
            h.update(b.ldflags.as_bytes());
            h.update(b.packages.join(" ").as_bytes());
            h.update(b.output.unwrap_or_default().as_bytes());
            h.update([0]);
        }
        for g in &self.generate {
            h.update(g.program.as_bytes());
            h.update(g.args.join(" ").as_bytes());
            h.update(g.output.as_bytes());
        }
        let digest = hex::encode(h.finalize());
        format!("{}-{}", self.key_prefix, &digest[..12])
    }

    /// `<cache>/<key>`.
    pub fn dir(&self) -> Result<PathBuf, BinariesError> {
        Ok(cache_root()?.join(self.key()))
    }

    fn complete(&self, dir: &Path) -> bool {
        dir.join(".complete").is_file()
            && self
                .outputs
                .iter()
                .all(|o| dir.join("bin").join(o).is_file())
    }

    /// Whether the set is built and cached.
    pub fn cached(&self) -> bool {
        self.dir().map(|d| self.complete(&d)).unwrap_or(false)
    }

    /// Returns `<cache>/<key>/bin`, building the set first if needed (blocking; minutes cold).
    pub fn ensure(&self) -> Result<PathBuf, BinariesError> {
        let dir = self.dir()?;
        let bin = dir.join("bin");
        if self.complete(&dir) {
            return Ok(bin);
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join(".lock");
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            eprintln!(
                "testenv: waiting for another process building {} in {}",
                self.label,
                dir.display()
            );
            lock.lock().map_err(io_err(&lock_path))?;
        }
        if self.complete(&dir) {
            return Ok(bin);
        }
        self.build(&dir, &bin)?;
        let stamp = dir.join(".complete");
        fs::write(&stamp, self.key()).map_err(io_err(&stamp))?;
        Ok(bin)
    }

    fn build(&self, dir: &Path, bin: &Path) -> Result<(), BinariesError> {
        for m in &self.modules {
            let d = dir.join("src").join(m.dir);
            for (name, content) in m.files {
                let p = d.join(name);
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                fs::write(&p, content).map_err(io_err(&p))?;
            }
        }
        fs::create_dir_all(bin).map_err(io_err(bin))?;
        let started = Instant::now();
        eprintln!(
            "testenv: building {} with Go (first run on this machine only; several minutes on 2 cores) into {}",
            self.label,
            bin.display()
        );
        for b in &self.builds {
            let out_dir = match b.output {
                Some(name) => bin.join(name).into_os_string(),
                None => {
                    let mut d = bin.as_os_str().to_os_string();
                    d.push("/");
                    d
                }
            };
            let mut args: Vec<OsString> = vec![
                "build".into(),
                "-trimpath".into(),
                "-ldflags".into(),
                b.ldflags.clone().into(),
                "-o".into(),
                out_dir,
            ];
            args.extend(b.packages.iter().map(OsString::from));
            let step = Instant::now();
            go(&dir.join("src").join(b.module), &b.what, &args)?;
            eprintln!("testenv: built {} in {:.0?}", b.what, step.elapsed());
        }
        for g in &self.generate {
            let program = bin.join(g.program);
            let out = Command::new(&program)
                .args(&g.args)
                .stdin(Stdio::null())
                .output()
                .map_err(io_err(&program))?;
            if !out.status.success() {
                return Err(BinariesError::Build {
                    what: g.program.to_string(),
                    status: out.status.to_string(),
                    command: format!("{} {}", program.display(), g.args.join(" ")),
                    output: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            let path = bin.join(g.output);
            fs::write(&path, &out.stdout).map_err(io_err(&path))?;
        }
        eprintln!("testenv: {} built in {:.0?}", self.label, started.elapsed());
        Ok(())
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BinariesError + '_ {
    move |source| BinariesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `go <args>` in `dir` with CGO off, printing a progress line every 30 s.
fn go(dir: &Path, what: &str, args: &[OsString]) -> Result<(), BinariesError> {
    let child = Command::new("go")
        .args(args)
        .current_dir(dir)
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BinariesError::NoGo)?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let label = what.to_string();
    let ticker = std::thread::spawn(move || {
        let started = Instant::now();
        while let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(PROGRESS_EVERY) {
            eprintln!(
                "testenv: still building {label} ({:.0?} so far)",
                started.elapsed()
            );
        }
    });
    let output = child.wait_with_output();
    let _ = done_tx.send(());
    let _ = ticker.join();
    let output = output.map_err(BinariesError::NoGo)?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(BinariesError::Build {
        what: what.to_string(),
        status: output.status.to_string(),
        command: format!(
            "cd {} && CGO_ENABLED=0 GOFLAGS=-mod=mod go {}",
            dir.display(),
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        output: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ldflags: &str) -> GoSet {
        GoSet {
            key_prefix: "x-v1".into(),
            label: "x".into(),
            modules: vec![GoModule {
                dir: "x",
                files: &[("go.mod", "module x\n")],
            }],
            builds: vec![GoBuild {
                module: "x",
                what: "x".into(),
                ldflags: ldflags.into(),
                packages: vec!["./cmd/x"],
                output: None,
            }],
            generate: vec![],
            outputs: vec!["x"],
        }
    }

    #[test]
    fn key_changes_with_build_flags_and_keeps_the_prefix() {
        let a = set("-s -w").key();
        assert!(a.starts_with("x-v1-"), "{a}");
        assert_eq!(a, set("-s -w").key());
        assert_ne!(a, set("-s").key());
    }
}
