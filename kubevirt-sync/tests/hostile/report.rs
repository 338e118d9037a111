//! A row of RELIABILITY.md's hostile-input and isolation tables per scenario: printed, and
//! written to `$KVTENANT_RELIABILITY_DIR/{hostile,isolation}/` (one file per scenario) when set;
//! `.ci/reliability` gathers the rows. A row is recorded only after the test's assertions about
//! it held, so a row in the file is a scenario that passed.
#![allow(dead_code)]

/// Which table of RELIABILITY.md the row belongs to.
#[derive(Clone, Copy)]
pub enum Table {
    Hostile,
    Isolation,
}

/// What one scenario tried and what came of it.
pub struct Finding {
    pub table: Table,
    /// A short name; also the row's file name (with `order` first).
    pub scenario: String,
    pub tried: String,
    /// What the tenant got: `refused, Event names spec...`, `404`, `rejected by the schema`, ...
    pub result: String,
    /// Objects the scenario counts (tenant objects tried plus host objects checked).
    pub objects: usize,
    /// Tenant objects that should have reached the host and did not.
    pub lost: usize,
    /// Host objects made twice for one tenant object.
    pub duplicated: usize,
    /// What reached the host (or another tenant) that should not have.
    pub leaked: usize,
    /// The test that backs the row: `file::test`.
    pub test: &'static str,
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl Finding {
    pub fn new(
        table: Table,
        scenario: impl Into<String>,
        tried: impl Into<String>,
        result: impl Into<String>,
        test: &'static str,
    ) -> Self {
        Self {
            table,
            scenario: scenario.into(),
            tried: tried.into(),
            result: result.into(),
            objects: 1,
            lost: 0,
            duplicated: 0,
            leaked: 0,
            test,
        }
    }

    pub fn objects(mut self, n: usize) -> Self {
        self.objects = n;
        self
    }

    pub fn leaked(mut self, n: usize) -> Self {
        self.leaked = n;
        self
    }

    pub fn lost(mut self, n: usize) -> Self {
        self.lost = n;
        self
    }

    pub fn duplicated(mut self, n: usize) -> Self {
        self.duplicated = n;
        self
    }

    /// Prints the row and writes it for `.ci/reliability`; panics (failing the test) when
    /// anything was lost, duplicated or leaked, after printing it.
    pub fn record(self) {
        let line = format!(
            "| {} | {} | {} | {} | {} | {} | {} | `{}` |",
            cell(&self.scenario),
            cell(&self.tried),
            cell(&self.result),
            self.objects,
            self.lost,
            self.duplicated,
            self.leaked,
            self.test
        );
        println!("RELIABILITY {line}");
        assert!(
            self.lost == 0 && self.duplicated == 0 && self.leaked == 0,
            "{}: lost {}, duplicated {}, leaked {}",
            self.scenario,
            self.lost,
            self.duplicated,
            self.leaked
        );
        if let Ok(dir) = std::env::var("KVTENANT_RELIABILITY_DIR") {
            let sub = match self.table {
                Table::Hostile => "hostile",
                Table::Isolation => "isolation",
            };
            let dir = std::path::Path::new(&dir).join(sub);
            std::fs::create_dir_all(&dir).unwrap();
            let file: String = self
                .scenario
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            std::fs::write(dir.join(format!("{file}.row")), format!("{line}\n")).unwrap();
        }
    }
}
