//! Debian packages the build, the demo and the tests need, installed when
//! missing. The list lives in `xtask/debian-packages.txt`, which `.ci/run`
//! reads too.
use std::process::Command;

use anyhow::{Result, bail};

const LIST: &str = include_str!("../debian-packages.txt");

/// What a step needs: each group includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// Building the host and the wasm guests.
    Build,
    /// Running the daemon and the demo.
    Run,
    /// The end-to-end and interop tests.
    Test,
    /// The tunnel benchmark's anchors (`cargo xtask bench-tunnels`).
    Bench,
}

impl Group {
    fn parse(s: &str) -> Option<Group> {
        match s {
            "build" => Some(Group::Build),
            "run" => Some(Group::Run),
            "test" => Some(Group::Test),
            "bench" => Some(Group::Bench),
            _ => None,
        }
    }
}

/// Every (group, package) of the list, in order.
pub fn all() -> Vec<(Group, &'static str)> {
    LIST.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut w = l.split_whitespace();
            let g =
                w.next().and_then(Group::parse).unwrap_or_else(|| panic!("debian-packages.txt: bad group in {l:?}"));
            let p = w.next().unwrap_or_else(|| panic!("debian-packages.txt: no package in {l:?}"));
            (g, p)
        })
        .collect()
}

/// The packages a step up to `upto` needs.
pub fn needed(upto: Group) -> Vec<&'static str> {
    all().into_iter().filter(|(g, _)| *g <= upto).map(|(_, p)| p).collect()
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Install whichever packages of the groups up to `upto` are missing (needs
/// root and apt).
pub fn ensure(upto: Group) -> Result<()> {
    let missing: Vec<&str> = needed(upto).into_iter().filter(|p| !installed(p)).collect();
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
        bail!(
            "apt-get update failed; install by hand: apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
    }
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    if !apt(&args) {
        bail!(
            "apt-get install failed (root needed); install by hand: apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_names_what_recommends_would_hide() {
        let build = needed(Group::Build);
        assert!(build.contains(&"rust-web-llvm"), "the wasm linker is only a Recommends of rustc-web");
        assert!(!build.contains(&"tshark"));
        let test = needed(Group::Test);
        assert!(test.contains(&"libstrongswan-standard-plugins"), "AES-GCM is only a Recommends of charon");
        assert!(test.len() > build.len());
    }
}
