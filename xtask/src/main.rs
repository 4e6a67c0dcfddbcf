//! `cargo xtask`: the project's one build, demo and test driver.
//!
//! - `cargo xtask build`  release host binary and all wasm components
//! - `cargo xtask guests` only the wasm components (and the tests' hostile ones)
//! - `cargo xtask demo`   build, then `wasmsec demo` (root)
//! - `cargo xtask test`   build, fmt and clippy checks, unit tests, end-to-end and interop tests (root)
//! - `cargo xtask bench`  build, then the ESP data-path benchmark
//! - `cargo xtask bench-tenants`  build, then the tenant scale benchmark
//! - `cargo xtask bench-sas`  build, then the SA scale benchmark (10 to 100,000 CHILD SAs)
//! - `cargo xtask bench-handshakes`  build, then IKEv2 setups as responder: wasmsec and strongSwan under one load
//! - `cargo xtask bench-memory`  build, then the whole daemon's memory per SA with SAs a real IKE peer set up
//! - `cargo xtask bench-connections`  build, then start, reload, memory and listing with 10,000 loaded connections
//! - `cargo xtask bench-teardown`  build, then a reload that removes 16,256 connections with 10,000 IKE SAs up
//! - `cargo xtask image`  build, then the container image as an OCI layout in target/image/oci
//! - `cargo xtask doctor` check that every tool the steps use works
//!
//! Each installs the Debian packages it needs when they are missing
//! (`xtask/debian-packages.txt`) and then proves they work (`doctor`), so
//! the README's two commands work on a fresh machine.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod background;
mod build;
mod doctor;
mod image;
mod packages;
mod python;
mod suites;

use background::Background;
use packages::Group;

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask <build|guests|demo|test|image|bench|bench-tenants|bench-sas|bench-tunnels|bench-handshakes|bench-memory|bench-connections|bench-teardown|doctor> [args]\n\
         \n  build            release host binary + wasm components into target/\
         \n  guests           only the wasm components, the tests' hostile ones and the Python policies (componentize-py from PyPI; into $WASMSEC_COMPONENTS if set)\
         \n  demo [args]      build, then run `wasmsec demo [args]` (needs root)\
         \n  test [filter]    build, then every test suite; a filter runs only the e2e/interop scripts whose name contains it\
         \n  image            build, then the container image (OCI layout in target/image/oci)\
         \n  bench            build, then the ESP data-path benchmark\
         \n  bench-tenants    build, then the tenant scale benchmark (10,000 tenants' guest instances in one process)\
         \n  bench-sas        build, then the SA scale benchmark (10, 1,000, 100,000 CHILD SAs: memory and lookup cost)\
         \n  bench-tunnels    build, then tunnel throughput: wasmsec, strongSwan libipsec, boringtun, wireguard-go in one run (needs root)\
         \n  bench-handshakes build, then IKEv2 setups as responder (sequential latency, setups per second and per CPU-second): wasmsec and strongSwan under the same load (needs root)\
         \n  bench-memory     build, then the whole daemon's resident memory per CHILD SA, SAs set up by an IKE load generator (16,000 tunnels of their own IKE SA; 100,000 CHILD SAs in 1,000 IKE SAs) (needs root)\
         \n  bench-connections build, then 10,000 loaded connections: start-up time, resident memory per connection, reloads, listing them (needs root)\
         \n  bench-teardown   build, then a reload that removes 16,256 connections, 10,000 of them with an IKE SA and a CHILD SA up (a load generator as the peers): its time, the DELETEs, CPU and memory (needs root; N=... IKE SAs)\
         \n  doctor           check that the tools of every step work; names the package of what is missing"
    );
    std::process::exit(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_else(|| usage());
    let rest: Vec<String> = args.collect();
    let r = match cmd.as_str() {
        "build" => build_cmd(),
        "guests" => guests_cmd(),
        "image" => image_cmd(),
        "doctor" => Ok(doctor::run(Group::Test)),
        "demo" => demo(&rest),
        "test" => test(rest.first().map(String::as_str)),
        "bench" => bench("esp_datapath"),
        // bench-policy: its name before it measured the ESP pairs too.
        "bench-tenants" | "bench-policy" => bench("tenant_scale"),
        "bench-sas" => bench("sa_scale"),
        "bench-tunnels" => bench_tunnels(),
        "bench-handshakes" => bench_handshakes(),
        "bench-memory" => load_bench("the daemon memory benchmark", "tests/bench/daemon-memory.sh"),
        "bench-connections" => load_bench("the connections benchmark", "tests/bench/connections.sh"),
        "bench-teardown" => load_bench("the teardown benchmark", "tests/bench/teardown.sh"),
        _ => usage(),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY-free check: the effective uid is in /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).unwrap_or("1");
    if euid != "0" {
        bail!("{what} needs root (network namespaces, TUN devices, packet capture); run it as root");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<bool> {
    eprintln!("xtask: running {:?}", cmd);
    Ok(cmd.status().with_context(|| format!("cannot start {:?}", cmd.get_program()))?.success())
}

/// Install what `upto` needs, then prove it works.
fn prepare(upto: Group) -> Result<()> {
    packages::ensure(upto)?;
    if !doctor::run(upto) {
        bail!("the preflight check failed (see above); `cargo xtask doctor` repeats it");
    }
    Ok(())
}

/// The build group's packages, which only the Debian toolchain route needs.
fn prepare_build() -> Result<()> {
    if matches!(build::route(), build::Route::DebianBuildStd) {
        prepare(Group::Build)?;
    }
    Ok(())
}

fn build_cmd() -> Result<bool> {
    prepare_build()?;
    build::all()?;
    Ok(true)
}

fn guests_cmd() -> Result<bool> {
    prepare_build()?;
    build::guests()?;
    build::hostile_guests()?;
    python::policies()?;
    Ok(true)
}

fn image_cmd() -> Result<bool> {
    prepare_build()?;
    build::all()?;
    python::policies()?;
    image::write()?;
    Ok(true)
}

fn demo(args: &[String]) -> Result<bool> {
    require_root("the demo")?;
    prepare(Group::Run)?;
    build::all()?;
    run(Command::new(build::host_binary()).arg("demo").args(args))
}

/// Where the team's strongSwan harness is expected: beside the checkout.
fn shared_harness() -> PathBuf {
    std::env::var_os("IOP_HARNESS").map(PathBuf::from).unwrap_or_else(|| root().join("../shared/interop"))
}

fn harness_banner() -> String {
    let bar = "!".repeat(78);
    format!(
        "{bar}\n!! the shared interop harness is missing ({}):\n!! its strongSwan scenarios \
         (tests/interop/test-shared-harness.sh) are SKIPPED.\n{bar}",
        shared_harness().display()
    )
}

/// The shared harness is beside every checkout of the project's machines and
/// in CI. Without it, a developer's run skips its scenarios (loudly); CI fails.
fn shared_harness_missing() -> Result<bool> {
    if shared_harness().join("sswan-psk.sh").exists() {
        return Ok(false);
    }
    eprintln!("{}", harness_banner());
    if std::env::var_os("CI").is_some() {
        bail!("CI is set and the shared interop harness is missing: CI always has it beside the checkout");
    }
    Ok(true)
}

fn bench(which: &str) -> Result<bool> {
    build::all()?;
    run(Command::new(build::cargo()).current_dir(root()).args(["bench", "-p", "wasmsec", "--bench", which]))
}

/// Tunnel throughput against the userspace anchors (tests/bench/tunnels.sh):
/// installs the anchors (Debian's WireGuard tools, boringtun-cli from
/// crates.io) if missing.
fn bench_tunnels() -> Result<bool> {
    require_root("the tunnel benchmark")?;
    prepare(Group::Test)?;
    packages::ensure(Group::Bench)?;
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_default()
        .join("bin/boringtun-cli");
    let on_path =
        Command::new("sh").args(["-c", "command -v boringtun-cli"]).output().is_ok_and(|o| o.status.success());
    if !on_path && !cargo_bin.exists() {
        eprintln!("xtask: installing boringtun-cli from crates.io (a few minutes)");
        if !run(Command::new(build::cargo()).args(["install", "--locked", "boringtun-cli"]))? {
            bail!("cargo install boringtun-cli failed");
        }
    }
    build::all()?;
    run(Command::new("bash")
        .arg(root().join("tests/bench/tunnels.sh"))
        .current_dir(root())
        .env("BORINGTUN", if on_path { PathBuf::from("boringtun-cli") } else { cargo_bin })
        .env("WASMSEC_BIN", build::host_binary())
        .env("WASMSEC_COMPONENTS", build::components_dir()))
}

/// IKEv2 setups as responder against strongSwan (tests/bench/handshakes.sh),
/// driven by the load generator of tests/ikeload.
fn bench_handshakes() -> Result<bool> {
    load_bench("the handshake benchmark", "tests/bench/handshakes.sh")
}

/// A benchmark script that drives the responder with the load generator of
/// tests/ikeload (built first).
fn load_bench(what: &str, script: &str) -> Result<bool> {
    require_root(what)?;
    prepare(Group::Test)?;
    build::all()?;
    if !run(Command::new(build::cargo()).current_dir(root()).args(["build", "--release", "-p", "wasmsec-ikeload"]))? {
        bail!("building the load generator failed");
    }
    run(Command::new("bash")
        .arg(root().join(script))
        .current_dir(root())
        .env("IKELOAD", root().join("target/release/wasmsec-ikeload"))
        .env("WASMSEC_BIN", build::host_binary())
        .env("WASMSEC_COMPONENTS", build::components_dir()))
}

/// Everything, in order; counts suites and prints one closing line.
fn test(filter: Option<&str>) -> Result<bool> {
    require_root("the test suite")?;
    let started = std::time::Instant::now();
    // Every step's time, printed as it ends and again at the close: CI's
    // budget is counted in minutes, so a suite that grows shows where.
    let mut times: Vec<(String, u64)> = Vec::new();
    let mut timed = |name: &str, since: std::time::Instant, ok: bool| {
        let secs = since.elapsed().as_secs();
        eprintln!(
            "xtask: {name}: {} in {secs} s ({} s since the start)",
            if ok { "passed" } else { "FAILED" },
            started.elapsed().as_secs()
        );
        times.push((name.to_string(), secs));
    };
    prepare(Group::Test)?;
    // In the background from the start: the Helm tests' kube-apiserver
    // (minutes of Go, built from Debian's source; the test waits for it),
    // and clippy in a target dir of its own (it would otherwise hold the
    // build directory's lock).
    let apiserver = "test-helm-apiserver.sh".contains(filter.unwrap_or("")).then(|| {
        let dir = root().join("target/kube-apiserver");
        Background::start(
            "the kube-apiserver build",
            &dir.join("background-build.log"),
            "bash",
            &["tests/helm/build-apiserver.sh", &dir.to_string_lossy()],
            &[],
        )
    });
    let clippy = filter.is_none().then(|| {
        Background::start(
            "cargo clippy",
            &root().join("target/clippy/clippy.log"),
            &build::cargo(),
            &["clippy", "--release", "--workspace", "--all-targets", "--", "-D", "warnings"],
            &[("CARGO_TARGET_DIR", &root().join("target/clippy"))],
        )
    });
    let harness_missing = shared_harness_missing()?;
    // The hostile guests (their own target dir) beside the real build.
    let hostile = std::thread::spawn(build::hostile_guests);
    let t = std::time::Instant::now();
    build::all_for_tests()?;
    hostile.join().map_err(|_| anyhow::anyhow!("the hostile guests' build panicked"))??;
    python::policies()?;
    // The container image, from exactly what the tests run (tests/helm).
    image::write()?;
    timed("the build", t, true);
    let mut passed = 0;
    let mut failed = Vec::new();
    if filter.is_none() {
        // Style first: cheap, and a difference fails the run. (clippy runs
        // in the background; its verdict is counted at the end.)
        let t = std::time::Instant::now();
        let ok = run(Command::new(build::cargo()).current_dir(root()).args(["fmt", "--all", "--check"]))?;
        timed("cargo fmt --check", t, ok);
        if ok { passed += 1 } else { failed.push("cargo fmt --check".to_string()) }
    }
    // Two lanes (see suites.rs): the suites of the interop topology one
    // after another, passed through live; beside them, the unit tests and
    // the suites with namespaces of their own, each shown when it ends.
    // The Helm tests come last in each: the kube-apiserver they need
    // builds meanwhile.
    let suite = |s: &PathBuf| suites::Step {
        name: s.strip_prefix(root()).unwrap_or(s).display().to_string(),
        cmd: {
            let mut c = Command::new("bash");
            c.arg(s)
                .current_dir(root())
                .env("WASMSEC_BIN", build::host_binary())
                // The path, not `current_exe()`: the test build above may have
                // replaced this very binary (it resolves xtask's features with
                // the whole workspace), leaving a "(deleted)" name.
                .env("XTASK_BIN", root().join("target/release/xtask"))
                .env("WASMSEC_COMPONENTS", build::components_dir());
            c
        },
    };
    let (mut interop, mut beside) = (Vec::new(), Vec::new());
    if filter.is_none() {
        // Unit and component tests: the same release profile as the binary,
        // so wasmtime is compiled once.
        let mut c = Command::new(build::cargo());
        c.current_dir(root()).env("WASMSEC_COMPONENTS", build::components_dir()).args(["test", "--release"]);
        beside.push(suites::Step { name: "cargo test".into(), cmd: c });
    }
    for s in suites::scripts(&root(), &["tests/e2e", "tests/interop", "tests/helm"], filter) {
        if suites::runs_beside(&s) {
            let mut step = suite(&s);
            step.cmd.env("WASMSEC_NS_PREFIX", suites::BESIDE_PREFIX);
            beside.push(step)
        } else {
            interop.push(suite(&s))
        }
    }
    let lane = std::thread::spawn(move || suites::run_lane(beside, false, started));
    let mut outcomes = suites::run_lane(interop, true, started);
    outcomes.extend(lane.join().map_err(|_| anyhow::anyhow!("the second lane of suites panicked"))?);
    let mut lane_times = Vec::new();
    for o in outcomes {
        lane_times.push((o.name.clone(), o.secs));
        if o.ok {
            passed += 1
        } else {
            failed.push(format!("{}{}", o.name, o.why.iter().map(|l| format!("\n    {l}")).collect::<String>()))
        }
    }
    drop(apiserver);
    if let Some(c) = clippy {
        let t = std::time::Instant::now();
        let ok = c.finish();
        timed("cargo clippy (the wait for it)", t, ok);
        if ok { passed += 1 } else { failed.push("cargo clippy".to_string()) }
    }
    times.extend(lane_times);
    times.sort_by_key(|t| std::cmp::Reverse(t.1));
    eprintln!("xtask: the slowest steps:");
    for (name, secs) in times.iter().take(8) {
        eprintln!("xtask:   {secs:>5} s  {name}");
    }
    eprintln!("xtask: {} s in all", started.elapsed().as_secs());
    for f in &failed {
        eprintln!("xtask: FAILED: {f}");
    }
    if harness_missing {
        eprintln!("{}", harness_banner());
    }
    println!("suites: {} passed, {} failed", passed, failed.len());
    Ok(failed.is_empty())
}
