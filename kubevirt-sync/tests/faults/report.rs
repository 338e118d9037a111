//! A row of RELIABILITY.md per scenario: printed, and written to `$KVTENANT_RELIABILITY_DIR`
//! (one file per scenario) when set; `.ci/reliability` gathers the rows.
#![allow(dead_code)]

use std::time::Duration;

/// What one fault scenario tried and what came of it.
pub struct Row {
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
            let path = std::path::Path::new(&dir).join(format!("{}.row", self.scenario));
            std::fs::write(&path, format!("{line}\n")).unwrap();
        }
    }
}
