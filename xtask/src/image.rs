//! `cargo xtask image`: the container image as an OCI image layout in
//! `target/image/oci`, written by `image/build-oci.py` (no container
//! engine): the built binary, the ESP and IKE components and the example
//! policies. Its reference is what the Helm chart installs by default.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build;
use crate::root;

/// The chart's default `image.repository`; the tag is the version.
pub const REPOSITORY: &str = "localhost/wasmsec";

/// Where the layout goes.
pub fn layout_dir() -> PathBuf {
    root().join("target/image/oci")
}

/// Write the layout from what is built (the caller builds first).
pub fn write() -> Result<()> {
    let components = build::components_dir();
    let policy = |name: &str, file: &str| format!("{name}={}", components.join(file).display());
    let cases = format!("{}", root().join("policies/allow-list/cases.json").display());
    let ok = Command::new("python3")
        .current_dir(root())
        .arg("image/build-oci.py")
        .arg(layout_dir())
        .arg(REPOSITORY)
        .arg(env!("CARGO_PKG_VERSION"))
        .arg(build::host_binary())
        .arg(&components)
        .arg(policy("allow-list.wasm", "policy-allow-list.wasm"))
        .arg(format!("allow-list.cases.json={cases}"))
        .arg(policy("allow-list-py.wasm", "policy-allow-list-py.wasm"))
        .arg(format!("allow-list-py.cases.json={cases}"))
        .status()
        .context("cannot run python3 image/build-oci.py")?
        .success();
    if !ok {
        bail!("writing the OCI image failed");
    }
    Ok(())
}
