//! The flags every command takes, and which kubeconfig they mean: kubectl's rules.
//!
//! - `--kubeconfig FILE`: that one file (as kubectl's flag).
//! - else `KUBECONFIG`: a `:`-separated list of files, merged as kubectl merges them (the
//!   first file that sets a value wins); `connect`/`disconnect` edit the first file of the
//!   list.
//! - else `~/.kube/config`, else the in-cluster service account.
//!
//! `--context` picks a context of that kubeconfig (default: its current context).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Serialize;

/// Flags shared by every command.
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Kubeconfig file of the host cluster (default: the files in $KUBECONFIG, merged as
    /// kubectl does, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context of the host cluster (default: the current context).
    #[arg(long, global = true, env = "KVTENANT_CONTEXT")]
    pub context: Option<String>,
    /// Log as JSON lines (for components).
    #[arg(long, global = true, env = "KVTENANT_LOG_JSON")]
    pub log_json: bool,
}

/// The kubeconfig file `connect`/`disconnect` edit: `--kubeconfig`, else the first file of
/// `KUBECONFIG` (empty entries skipped, as kubectl does), else `~/.kube/config`.
pub fn file_to_edit(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    home: Option<&OsStr>,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(first) = env
        .into_iter()
        .flat_map(std::env::split_paths)
        .find(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = home.context("HOME is not set; pass --kubeconfig")?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

impl GlobalArgs {
    /// The kubeconfig file `connect`/`disconnect` edit.
    pub fn kubeconfig_path(&self) -> anyhow::Result<PathBuf> {
        file_to_edit(
            self.kubeconfig.as_deref(),
            std::env::var_os("KUBECONFIG").as_deref(),
            std::env::var_os("HOME").as_deref(),
        )
    }

    /// The host cluster's client configuration.
    pub async fn host_config(&self) -> anyhow::Result<kube::Config> {
        let opts = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &opts).await?
            }
            // KUBECONFIG (merged) or ~/.kube/config
            None if self.context.is_some() => kube::Config::from_kubeconfig(&opts).await?,
            // the same, else in-cluster
            None => kube::Config::infer().await?,
        };
        kvtenant_kubeutil::identify(&mut config);
        Ok(config)
    }

    /// A client for the host cluster.
    pub async fn host_client(&self) -> anyhow::Result<Client> {
        Ok(Client::try_from(self.host_config().await?)?)
    }
}

/// `-o` of the read verbs.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// `value` as `-o json` (pretty, with a final newline) or `-o yaml` prints it; `None` for
/// the table, which each verb prints its own way.
pub fn render<T: Serialize>(output: Output, value: &T) -> anyhow::Result<Option<String>> {
    Ok(match output {
        Output::Json => Some(format!("{}\n", serde_json::to_string_pretty(value)?)),
        Output::Yaml => Some(serde_yaml::to_string(value)?),
        Output::Table => None,
    })
}

/// Objects as `kubectl get -o json|yaml` prints several: a `v1` `List`.
pub fn as_list<T: Serialize>(items: &[T]) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": serde_json::to_value(items)?,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_flag_then_the_first_kubeconfig_entry_then_home_is_edited() {
        let home = Some(OsStr::new("/home/u"));
        assert_eq!(
            file_to_edit(Some(Path::new("/f")), Some(OsStr::new("/a:/b")), home).unwrap(),
            PathBuf::from("/f")
        );
        assert_eq!(
            file_to_edit(None, Some(OsStr::new(":/a:/b")), home).unwrap(),
            PathBuf::from("/a")
        );
        assert_eq!(
            file_to_edit(None, Some(OsStr::new("")), home).unwrap(),
            PathBuf::from("/home/u/.kube/config")
        );
        assert_eq!(
            file_to_edit(None, None, home).unwrap(),
            PathBuf::from("/home/u/.kube/config")
        );
        assert!(file_to_edit(None, None, None).is_err());
    }

    #[test]
    fn several_objects_are_a_v1_list() {
        let list = as_list(&[serde_json::json!({"kind": "VirtualCluster"})]).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["items"][0]["kind"], "VirtualCluster");
        assert_eq!(as_list::<u8>(&[]).unwrap()["items"], serde_json::json!([]));
    }

    #[test]
    fn json_and_yaml_render_and_the_table_is_left_to_the_verb() {
        let v = serde_json::json!({"a": 1});
        assert_eq!(
            render(Output::Json, &v).unwrap().unwrap(),
            "{\n  \"a\": 1\n}\n"
        );
        assert_eq!(render(Output::Yaml, &v).unwrap().unwrap(), "a: 1\n");
        assert!(render(Output::Table, &v).unwrap().is_none());
    }
}
