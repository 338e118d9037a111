//! The report: tables on stdout (Markdown, so they paste into BENCHMARKS.md) and one JSON file.

use serde::Serialize;

use crate::procfs::Machine;
use crate::stats::Summary;

/// Printed on every table and stored in the JSON: what these numbers are.
pub const SIMULATED: &str = "KubeVirt's control plane is real (virt-api and virt-controller \
v1.8.1 on testenv); nodes and pods (kwok), virt-handler (testenv's node agent) and CDI are \
simulated: no VM boots; the numbers measure kvtenant's sync path, the apiservers and KubeVirt's \
control plane, not VM start-up.";

/// The same for the pods scenario.
pub const SIMULATED_PODS: &str = "kube-scheduler is real; nodes and pods are simulated by kwok (a \
pod is Running once kwok writes its status, no container starts): the numbers measure kvtenant's \
sync path, the apiservers, the scheduler and kwok, not container start-up.";

/// Facts about the run.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub date: String,
    pub commit: String,
    pub worktree_dirty: bool,
    pub command: String,
    pub machine: Machine,
    pub kvtenant_bin: Option<String>,
    pub simulated: &'static str,
}

pub fn meta(kvtenant_bin: Option<String>) -> Meta {
    // the repository this binary was built from, else the current directory
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        let mut cmd = std::process::Command::new("git");
        if repo.is_dir() {
            cmd.arg("-C").arg(&repo);
        }
        cmd.args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Meta {
        date,
        commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        worktree_dirty: git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty()),
        command: std::env::args()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        machine: crate::procfs::machine(),
        kvtenant_bin,
        simulated: SIMULATED,
    }
}

/// A table printed as Markdown.
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                s.push_str(&format!(" {c:<w$} |"));
            }
            s
        };
        let mut out = format!("\n### {}\n\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('\n');
        out.push('|');
        for w in &widths {
            out.push_str(&format!("{}|", "-".repeat(w + 2)));
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        println!("{}", self.render());
    }
}

/// Milliseconds with a precision that suits their size.
pub fn fmt_ms(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

pub fn fmt_f(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        // no "-0.0" (an empty float sum is -0.0)
        let v = if v == 0.0 { 0.0 } else { v };
        format!("{v:.decimals$}")
    } else {
        "n/a".into()
    }
}

pub fn fmt_bytes(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / 1024.0 / 1024.0)
    } else if a >= 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

/// `p50 / p95 / p99 / max` of a summary.
pub fn fmt_summary(s: &Summary) -> String {
    if s.count == 0 {
        return "n/a".into();
    }
    format!(
        "{} / {} / {} / {}",
        fmt_ms(s.p50_ms),
        fmt_ms(s.p95_ms),
        fmt_ms(s.p99_ms),
        fmt_ms(s.max_ms)
    )
}

/// A target from the issue, what was measured, and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
    pub note: String,
}

pub fn targets_table(targets: &[TargetCheck]) -> Table {
    let mut t = Table::new(
        "Targets (issue 8) — real KubeVirt control plane, simulated nodes and virt-handler",
        &["target", "measured", "met", "note"],
    );
    for c in targets {
        t.row(vec![
            c.target.clone(),
            c.measured.clone(),
            match c.met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "not measured".into(),
            },
            c.note.clone(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_renders_aligned_markdown() {
        let mut t = Table::new("x", &["a", "bb"]);
        t.row(vec!["long cell".into(), "1".into()]);
        let s = t.render();
        assert!(s.contains("| a         | bb |"), "{s}");
        assert!(s.contains("| long cell | 1  |"), "{s}");
        assert!(s.contains("|-----------|----|"), "{s}");
    }

    #[test]
    fn bytes_and_ms_format() {
        assert_eq!(fmt_bytes(2048.0), "2.0 KiB");
        assert_eq!(fmt_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(fmt_ms(1.234), "1.23");
        assert_eq!(fmt_ms(123.4), "123");
    }
}
