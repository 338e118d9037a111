//! `kvtenant capi --provider control-plane|infrastructure`: one of kvtenant's Cluster API
//! providers (`capi/`), with the admin port every component has.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Args;
use prometheus_client::registry::Registry;

use crate::cli::GlobalArgs;
use crate::components::AdminArgs;

#[derive(Args, Debug)]
pub struct CapiCommand {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub provider: kvtenant_capi::CapiArgs,
}

pub async fn capi(g: &GlobalArgs, args: CapiCommand) -> anyhow::Result<()> {
    let client = g.host_client().await?;
    // ready once running: the provider fails at start when its CRD is not served
    let ready = Arc::new(AtomicBool::new(true));
    let admin = tokio::spawn(crate::admin::serve(
        args.admin.admin_addr,
        Registry::default(),
        ready,
    ));
    tokio::select! {
        r = admin => { r??; anyhow::bail!("the admin server stopped") }
        r = kvtenant_capi::run(client, args.provider, kvtenant_controller::shutdown_signal()) => Ok(r?),
    }
}
