//! Writes the CRD YAML committed at `api/crds/` and the configuration reference at
//! `docs/configuration.md` from the Rust types:
//! `cargo run -p kvtenant-api --example gen-crds`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(kvtenant_api::crd::CRD_YAML_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, kvtenant_api::crd_yaml())?;
    println!("wrote {}", path.display());
    let reference =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(kvtenant_api::reference::REFERENCE_PATH);
    std::fs::create_dir_all(reference.parent().unwrap_or(&reference))?;
    std::fs::write(&reference, kvtenant_api::reference::reference_markdown())?;
    println!("wrote {}", reference.display());
    Ok(())
}
