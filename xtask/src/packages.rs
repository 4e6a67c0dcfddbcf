//! Debian packages the build and the tests need, installed when missing.
use std::process::Command;

use anyhow::{Result, bail};

/// For building wasm guests without a rustup wasm32 target (TOOLCHAIN.md).
pub const GUEST_TOOLCHAIN: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "lld-22"];
/// For running the daemon and the demo.
pub const RUNTIME: &[&str] = &["iproute2", "tcpdump", "iputils-ping", "procps"];
/// For the end-to-end and interop tests.
pub const TEST: &[&str] = &[
    "tshark",
    "nftables",
    "conntrack",
    "iperf3",
    "strongswan-charon",
    "strongswan-swanctl",
    "libcharon-extra-plugins",
    "libstrongswan-extra-plugins",
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Install whichever of `pkgs` are missing (needs root and apt).
pub fn ensure(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !apt(&["update", "-qq"]) {
        bail!("apt-get update failed; install by hand: apt-get install -y {}", missing.join(" "));
    }
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    if !apt(&args) {
        bail!("apt-get install failed (root needed); install by hand: apt-get install -y {}", missing.join(" "));
    }
    Ok(())
}
