//! Building the host and the wasm components.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{packages, root};

pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Guest crates and the component file each becomes.
const COMPONENTS: &[(&str, &str)] = &[
    ("wasmsec-esp-component", "esp.wasm"),
    ("wasmsec-ike-component", "ike.wasm"),
    ("wasmsec-policy-allow-list", "policy-allow-list.wasm"),
    ("wasmsec-policy-tenant-map", "policy-tenant-map.wasm"),
];

pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn host_binary() -> PathBuf {
    root().join("target/release/wasmsec")
}

/// Where components are written: `$WASMSEC_COMPONENTS` (the variable the
/// daemon reads too) or `target/components`.
pub fn components_dir() -> PathBuf {
    std::env::var_os("WASMSEC_COMPONENTS").map(PathBuf::from).unwrap_or_else(|| root().join("target/components"))
}

/// How guests are compiled on this machine.
pub enum Route {
    /// rustup has the wasm32 target: plain cargo.
    Rustup,
    /// Debian's rustc-web with its std sources and -Zbuild-std.
    DebianBuildStd,
}

pub fn route() -> Route {
    let has_target = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == WASM_TARGET))
        .unwrap_or(false);
    if has_target { Route::Rustup } else { Route::DebianBuildStd }
}

pub fn all() -> Result<()> {
    guests()?;
    host(&["-p", "wasmsec"])
}

/// The same, for the test suite: the host binary built together with
/// every test target of the workspace's default members, which is exactly
/// the graph `cargo test --release` resolves. Built on its own, the host
/// resolves shared dependencies' features differently (xtask's newer
/// wasmparser turns on `semver/std`), and `cargo test` then compiled
/// wasmtime a second time: five minutes of CI.
pub fn all_for_tests() -> Result<()> {
    guests()?;
    host(&["--all-targets"])
}

fn host(selection: &[&str]) -> Result<()> {
    let ok = Command::new(cargo())
        .current_dir(root())
        .args(["build", "--release"])
        .args(selection)
        .status()
        .context("cannot run cargo")?
        .success();
    if !ok {
        bail!("building the host failed");
    }
    Ok(())
}

pub fn guests() -> Result<()> {
    let target_dir = root().join("target/guest");
    let mut cmd = guest_cargo(&target_dir, "guest")?;
    for (krate, _) in COMPONENTS {
        cmd.args(["-p", krate]);
    }
    if !cmd.status().context("cannot run cargo for the guests")?.success() {
        bail!("building the wasm guests failed");
    }
    for (krate, file) in COMPONENTS {
        componentize(&target_dir, "guest", krate, file)?;
    }
    Ok(())
}

/// Tests only: the hostile guests of tests/interop/test-hostile-esp.sh
/// and test-hostile-ike.sh,
/// `hostile-esp.wasm` (tests/hostile/esp), `hostile-ike.wasm` (the IKE
/// component with its `hostile` feature) and the policies of
/// tests/interop/test-policy.sh (tests/hostile/policy), built apart from
/// the real ones.
pub fn hostile_guests() -> Result<()> {
    let target_dir = root().join("target/guest-hostile");
    let mut cmd = guest_cargo(&target_dir, "guest-test")?;
    cmd.args([
        "-p",
        "wasmsec-hostile-esp",
        "-p",
        "wasmsec-ike-component",
        "--features",
        "wasmsec-ike-component/hostile",
    ]);
    if !cmd.status().context("cannot run cargo for the hostile guests")?.success() {
        bail!("building the hostile test guests failed");
    }
    componentize(&target_dir, "guest-test", "wasmsec-hostile-esp", "hostile-esp.wasm")?;
    componentize(&target_dir, "guest-test", "wasmsec-ike-component", "hostile-ike.wasm")?;
    // The hostile policy twice: once as it is, once with a failing self-test.
    for (features, file) in [(None, "hostile-policy.wasm"), (Some("failing-self-test"), "hostile-policy-selftest.wasm")]
    {
        let mut cmd = guest_cargo(&target_dir, "guest-test")?;
        cmd.args(["-p", "wasmsec-hostile-policy"]);
        if let Some(f) = features {
            cmd.args(["--features", f]);
        }
        if !cmd.status().context("cannot run cargo for the hostile policy")?.success() {
            bail!("building the hostile test policy failed");
        }
        componentize(&target_dir, "guest-test", "wasmsec-hostile-policy", file)?;
    }
    Ok(())
}

/// `cargo build` of guest crates for wasm32 with `profile` into
/// `target_dir` (add `-p`s).
fn guest_cargo(target_dir: &Path, profile: &str) -> Result<Command> {
    let mut cmd = match route() {
        Route::Rustup => {
            eprintln!("xtask: guests: rustup toolchain with the {WASM_TARGET} target");
            let mut c = Command::new(cargo());
            c.arg("build");
            c
        }
        Route::DebianBuildStd => {
            eprintln!("xtask: guests: no rustup {WASM_TARGET} target; Debian rustc-web with -Zbuild-std");
            packages::ensure(packages::Group::Build)?;
            let mut c = Command::new("/usr/bin/cargo");
            // /usr/bin/cargo would find rustup's rustc through PATH, which has
            // no std sources: name Debian's compiler explicitly.
            c.env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTDOC", "/usr/bin/rustdoc")
                .args(["build", "-Zbuild-std=std,panic_abort"]);
            c
        }
    };
    // The outer cargo's settings must not leak into the nested build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(var);
    }
    match route() {
        Route::Rustup => {
            cmd.env_remove("RUSTC").env_remove("RUSTDOC");
        }
        // A guest on wasm32-unknown-unknown has nowhere to print a panic
        // message, and the host sees a trap either way: with std built
        // here, panics trap at once, and the messages, locations and the
        // formatting they pull in leave the module. That takes the
        // allow-list policy's data from two pages to one, 4 KiB less for
        // every tenant's policy instance (#13). (Rustup's prebuilt std
        // keeps them; the guests work the same, only larger.)
        Route::DebianBuildStd => {
            cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Zunstable-options\x1f-Cpanic=immediate-abort");
        }
    }
    cmd.current_dir(root()).args(["--profile", profile, "--target", WASM_TARGET, "--target-dir"]).arg(target_dir);
    Ok(cmd)
}

/// Turn the core module cargo built for `krate` into component `file`.
fn componentize(target_dir: &Path, profile: &str, krate: &str, file: &str) -> Result<()> {
    let out = components_dir();
    std::fs::create_dir_all(&out)?;
    let core = target_dir.join(WASM_TARGET).join(profile).join(format!("{}.wasm", krate.replace('-', "_")));
    let module = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{krate}: no component type information in the module"))?
        .validate(true)
        .encode()
        .with_context(|| format!("{krate}: cannot make a component"))?;
    let dest = out.join(file);
    std::fs::write(&dest, &component)?;
    eprintln!("xtask: component {} ({} bytes)", dest.display(), component.len());
    Ok(())
}
