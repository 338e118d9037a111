//! A row of RELIABILITY.md per scenario: printed, and written to `$KVTENANT_RELIABILITY_DIR`
//! (one file per scenario, in a folder per [`Fault`]) when set; `.ci/reliability` gathers the rows.
#![allow(dead_code)]

use std::time::Duration;

/// The kind of fault a scenario tries; RELIABILITY.md has a table for each.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// A kvtenant process killed (its tasks dropped, or SIGKILL).
    Crash,
    /// An apiserver, etcd or the network between them away for a while.
    Outage,
    /// Two writers at once.
    Race,
}

impl Fault {
    fn dir(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Outage => "outage",
            Self::Race => "race",
        }
    }
}

/// What one fault scenario tried and what came of it.
pub struct Row {
    pub kind: Fault,
    /// A short name, also the file name of the row.
    pub scenario: &'static str,
    pub tried: String,
    /// Objects the scenario counts (tenant objects synced down plus objects mirrored up).
    pub objects: usize,
    /// Tenant objects missing on the host (or host objects missing in the tenant) at the end.
    pub lost: usize,
    /// Objects made twice: a host copy present before the fault with another uid after it, or
    /// two host objects for one tenant object.
    pub duplicated: usize,
    /// Host objects left without their tenant object.
    pub leaked: usize,
    /// From the end of the fault to everything in agreement again.
    pub recovered: Option<Duration>,
    pub notes: String,
}

impl Row {
    pub fn record(&self) {
        let recovered = self
            .recovered
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "not within the test's wait".into());
        let line = format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.tried,
            self.objects,
            self.lost,
            self.duplicated,
            self.leaked,
            recovered,
            self.notes
        );
        println!("RELIABILITY {line}");
        if let Ok(dir) = std::env::var("KVTENANT_RELIABILITY_DIR") {
            let dir = std::path::Path::new(&dir).join(self.kind.dir());
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{}.row", self.scenario));
            std::fs::write(&path, format!("{line}\n")).unwrap();
        }
    }
}
