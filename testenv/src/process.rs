//! Child processes of control planes: each in its own process group, registered so that they die
//! with the test or tool that started them.
//!
//! Three layers make sure nothing is left running:
//! 1. [`Managed`] kills its process group on `Drop` (normal end of a test, and panics, which
//!    unwind).
//! 2. The first managed process installs a SIGINT/SIGTERM handler thread that kills every live
//!    process group and removes their scratch directories before the process exits (Ctrl-C, a
//!    test runner's timeout).
//! 3. Each owner writes a record under the cache's `run/` directory; when a later testenv starts
//!    it kills process groups left by owners that died without cleaning up (SIGKILL).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

/// Live process groups of this process, by pgid, with the directories to remove on a signal.
static LIVE: OnceLock<Mutex<BTreeMap<u32, Option<PathBuf>>>> = OnceLock::new();

fn live() -> &'static Mutex<BTreeMap<u32, Option<PathBuf>>> {
    LIVE.get_or_init(|| {
        install_signal_handler();
        reap_stale();
        Mutex::new(BTreeMap::new())
    })
}

fn run_dir() -> Option<PathBuf> {
    crate::binaries::cache_root().ok().map(|r| r.join("run"))
}

fn record_path(pgid: u32) -> Option<PathBuf> {
    run_dir().map(|d| d.join(format!("{}-{pgid}", std::process::id())))
}

fn install_signal_handler() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("testenv-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                kill_all();
                std::process::exit(128 + sig);
            }
        });
}

/// Kills every process group this process started and removes their scratch directories.
pub fn kill_all() {
    let groups: Vec<(u32, Option<PathBuf>)> = match live().lock() {
        Ok(mut g) => std::mem::take(&mut *g).into_iter().collect(),
        Err(_) => return,
    };
    for (pgid, _) in &groups {
        kill_group(*pgid);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while groups.iter().any(|(pgid, _)| alive(*pgid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for (pgid, dir) in groups {
        if let Some(dir) = dir {
            let _ = fs::remove_dir_all(dir);
        }
        if let Some(rec) = record_path(pgid) {
            let _ = fs::remove_file(rec);
        }
    }
}

fn kill_group(pgid: u32) {
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
}

/// Kills process groups recorded by testenv owners that are gone.
fn reap_stale() {
    let Some(dir) = run_dir() else { return };
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((owner, pgid)) = name.split_once('-') else {
            continue;
        };
        let (Ok(owner), Ok(pgid)) = (owner.parse::<i32>(), pgid.parse::<u32>()) else {
            continue;
        };
        if kill(Pid::from_raw(owner), None).is_ok() {
            continue; // owner still alive
        }
        kill_group(pgid);
        if let Ok(scratch) = fs::read_to_string(entry.path()) {
            let scratch = scratch.trim();
            if !scratch.is_empty() {
                let _ = fs::remove_dir_all(scratch);
            }
        }
        let _ = fs::remove_file(entry.path());
    }
}

/// A child process in its own process group, killed with its group on drop.
#[derive(Debug)]
pub struct Managed {
    name: String,
    child: Child,
    pgid: u32,
    log: PathBuf,
}

impl Managed {
    /// Starts `cmd` in a new process group, with stdout and stderr appended to `log`.
    /// `scratch` is removed if the process is killed by the signal handler or the stale reaper.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        scratch: Option<&Path>,
    ) -> std::io::Result<Self> {
        let registry = live();
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn()?;
        let pgid = child.id();
        if let Ok(mut g) = registry.lock() {
            g.insert(pgid, scratch.map(Path::to_path_buf));
        }
        if let (Some(dir), Some(rec)) = (run_dir(), record_path(pgid)) {
            let _ = fs::create_dir_all(dir);
            let _ = fs::write(
                rec,
                scratch.map(|s| s.display().to_string()).unwrap_or_default(),
            );
        }
        Ok(Self {
            name: name.to_string(),
            child,
            pgid,
            log: log.to_path_buf(),
        })
    }

    /// Process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.pgid
    }

    /// The program's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the log file with the process's output.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the process group and waits for the process to be gone.
    pub fn kill(&mut self) {
        kill_group(self.pgid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Ok(mut g) = live().lock() {
            g.remove(&self.pgid);
        }
        if let Some(rec) = record_path(self.pgid) {
            let _ = fs::remove_file(rec);
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process with this pid is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // state is the field after the parenthesised command name
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}
