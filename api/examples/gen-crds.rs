//! Writes the CRD YAML committed at `api/crds/` from the Rust types:
//! `cargo run -p kvtenant-api --example gen-crds`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(kvtenant_api::crd::CRD_YAML_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, kvtenant_api::crd_yaml())?;
    println!("wrote {}", path.display());
    Ok(())
}
