//! `--pin HOST:TENANTS`: the host side (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok, virt-api, virt-controller) on some CPUs and the tenant side (the tenant
//! control planes and the syncer) on others, with `taskset`, in both the kvtenant and the direct
//! runs. On a shared machine the tenant apiservers otherwise take the host's CPU, which on a real
//! platform they do not (they run elsewhere). The bench process itself (load, watches, the
//! simulated virt-handler and CDI) is left unpinned.

use std::process::Command;
use std::str::FromStr;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

/// CPU lists (taskset's `-c` syntax) of the two sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pinning {
    pub host: String,
    pub tenants: String,
}

impl FromStr for Pinning {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, tenants) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST_CPUS:TENANT_CPUS, e.g. 0:1 or 0-1:2-3"))?;
        let valid = |l: &str| {
            !l.is_empty()
                && l.split(',').all(|part| {
                    let mut ends = part.splitn(2, '-');
                    ends.all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
        };
        if !valid(host) || !valid(tenants) {
            return Err(format!(
                "{s:?}: CPU lists are numbers and ranges separated by commas (0, 0-1, 0,2)"
            ));
        }
        Ok(Self {
            host: host.into(),
            tenants: tenants.into(),
        })
    }
}

/// Pins every thread of each process to `cpus` (threads made later inherit it) and says so.
pub fn pin(what: &str, pids: &[u32], cpus: &str) -> Result<()> {
    for pid in pids {
        let out = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .output()
            .context("running taskset (util-linux) for --pin")?;
        if !out.status.success() {
            bail!(
                "pinning {what} (pid {pid}) to CPUs {cpus}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let now: Vec<String> = pids
        .iter()
        .filter_map(|p| allowed(*p))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    println!(
        "pinned {what}: {} process(es), allowed CPUs now {}",
        pids.len(),
        now.join(" | ")
    );
    Ok(())
}

/// The CPUs a process may run on now (`Cpus_allowed_list` of /proc/PID/status).
pub fn allowed(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|l| l.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_specs_parse_or_say_what_is_expected() {
        assert_eq!(
            "0:1".parse::<Pinning>().unwrap(),
            Pinning {
                host: "0".into(),
                tenants: "1".into()
            }
        );
        assert_eq!("0-1:2,3".parse::<Pinning>().unwrap().tenants, "2,3");
        for bad in ["0", "0:", ":1", "a:1", "0:1-", "0;1"] {
            assert!(bad.parse::<Pinning>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_child_is_pinned_with_all_its_threads() {
        let cpu = allowed(std::process::id())
            .and_then(|l| l.split([',', '-']).next().map(str::to_owned))
            .unwrap();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        pin("sleep", &[child.id()], &cpu).unwrap();
        assert_eq!(allowed(child.id()).as_deref(), Some(cpu.as_str()));
        let _ = child.kill();
        let _ = child.wait();
    }
}
