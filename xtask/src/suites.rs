//! The test suites: which of them run beside which, and how each one is
//! run and reported.
//!
//! The interop suites build tests/interop/lib.sh's topology in namespaces
//! named `$WASMSEC_NS_PREFIX-gwa` and so on (`wsi-` by default), and many
//! name those namespaces themselves, so they run one after another. A
//! suite that names no `wsi-` namespace says so with the line [`BESIDE`]
//! and runs in a second lane at the same time, where xtask sets the
//! prefix [`BESIDE_PREFIX`]: the namespaces of lib.sh's topology are then
//! its own, and so are those the others name themselves (the demo's
//! `wsdemo-*`, the shared harness's `iop-*`, the tenant suites' `wst-*`,
//! ...). Most suites spend their minutes waiting on timers and peers, so
//! two lanes on two cores take about half the wall time of one (CI's
//! budget is 45 minutes).
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};

/// The line a suite carries when it names no namespace of the first
/// lane (checked here and by the unit test below).
pub const BESIDE: &str = "# xtask: beside the interop suites";

/// The namespace prefix of tests/interop/lib.sh's topology in the second
/// lane (`WASMSEC_NS_PREFIX`); the first keeps lib.sh's default.
pub const BESIDE_PREFIX: &str = "wsj";

/// One step of a lane: a name for the report and what to run.
pub struct Step {
    pub name: String,
    pub cmd: Command,
}

/// What a step came to.
pub struct Outcome {
    pub name: String,
    pub secs: u64,
    pub ok: bool,
    pub why: Vec<String>,
}

/// True if the script at `path` says it may run beside the others and
/// names no namespace of the first lane. One that says so wrongly runs in
/// the first lane, with a warning.
pub fn runs_beside(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    if !text.lines().any(|l| l.starts_with(BESIDE)) {
        return false;
    }
    if text.contains("wsi-") {
        eprintln!(
            "xtask: warning: {} says it runs beside the interop suites, but it names a wsi- namespace: it runs among them",
            path.display()
        );
        return false;
    }
    true
}

/// Run `steps` one after another. A `live` lane passes each step's output
/// through as it comes; the other lane prints each step's output as one
/// block when it ends, so the two never interleave within a step.
pub fn run_lane(steps: Vec<Step>, live: bool, started: Instant) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for mut step in steps {
        let t = Instant::now();
        let (ok, why) = run_suite(&mut step.cmd, (!live).then_some(step.name.as_str()))
            .unwrap_or_else(|e| (false, vec![format!("{e:#}")]));
        let secs = t.elapsed().as_secs();
        eprintln!(
            "xtask: {}: {} in {secs} s ({} s since the start)",
            step.name,
            if ok { "passed" } else { "FAILED" },
            started.elapsed().as_secs()
        );
        outcomes.push(Outcome { name: step.name, secs, ok, why });
    }
    outcomes
}

/// Run a test script; true if it passed, and why not: its `FAIL:` lines
/// (cargo test's `test ... FAILED`), or that it ran out of its own time
/// bound (`timeout`'s 124). The reasons are repeated at the close, where
/// CI's tail of the output shows them. Its output is passed through as it
/// comes, or with `held` (the step's name) printed as one block when it
/// ends.
pub fn run_suite(cmd: &mut Command, held: Option<&str>) -> Result<(bool, Vec<String>)> {
    let live = held.is_none();
    eprintln!("xtask: running {:?}", cmd);
    let (reader, writer) = std::io::pipe().context("a pipe for a test's output")?;
    cmd.stdout(writer.try_clone().context("a pipe for a test's output")?).stderr(writer);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    // The command holds the pipe's writing ends: without dropping them
    // the reader would never see the end.
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let why = Arc::new(Mutex::new(Vec::new()));
    let kept_all = Arc::new(Mutex::new(Vec::<u8>::new()));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (seen, kept) = (why.clone(), kept_all.clone());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).split(b'\n').map_while(Result::ok) {
            if live {
                // println!, not a write to stdout: the unit tests' harness
                // captures it, so their made-up FAIL lines stay out of CI's
                // output. Each println! holds stdout's lock while it writes.
                println!("{}", String::from_utf8_lossy(&line));
            } else {
                let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
                k.extend_from_slice(&line);
                k.push(b'\n');
            }
            // A suite's failed check, or a failed Rust test (cargo test).
            if line.starts_with(b"FAIL:") || (line.starts_with(b"test ") && line.ends_with(b" FAILED")) {
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(String::from_utf8_lossy(&line).into_owned());
            }
        }
        let _ = done_tx.send(());
    });
    let status = child.wait().context("waiting for a test")?;
    // A process the script left behind may hold the pipe open: the suite
    // is over all the same.
    let drained = done_rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok();
    if let Some(name) = held {
        let block = std::mem::take(&mut *kept_all.lock().unwrap_or_else(|e| e.into_inner()));
        print!(
            "xtask: ---- the output of {name} (it ran beside the interop suites) ----\n{}",
            String::from_utf8_lossy(&block)
        );
        let _ = std::io::stdout().flush();
    }
    let mut why = why.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !drained {
        eprintln!("xtask: a process the test started still holds its output open");
    }
    if status.code() == Some(124) {
        why.push("ran out of its time bound (the script's own `timeout`)".to_string());
    } else if !status.success() && why.is_empty() {
        why.push(format!("ended with {status} before its checks said why"));
    }
    Ok((status.success(), why))
}

/// The test scripts of `dirs` under `root`, sorted within each directory.
pub fn scripts(root: &Path, dirs: &[&str], filter: Option<&str>) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else { continue };
        let mut in_dir: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with("test-") && name.ends_with(".sh") && filter.is_none_or(|f| name.contains(f))
            })
            .collect();
        in_dir.sort();
        all.extend(in_dir);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interop libraries: they name namespaces only through the prefix.
    const INTEROP_LIBS: [&str; 2] = ["tests/interop/lib.sh", "tests/interop/hostile-lib.sh"];

    fn suite(script: &str) -> (bool, Vec<String>) {
        run_suite(Command::new("bash").args(["-c", script]), None).expect("bash runs")
    }

    #[test]
    fn a_failed_suite_says_which_checks_failed_or_that_it_ran_out_of_time() {
        assert_eq!(suite("echo 'ok: one'; echo 'not FAIL: this'"), (true, vec![]));
        let (ok, why) = suite("echo 'ok: one'; echo 'FAIL: two (2)'; echo 'FAIL: three'; exit 1");
        assert!(!ok);
        assert_eq!(why, ["FAIL: two (2)", "FAIL: three"]);
        assert_eq!(
            suite("exit 124"),
            (false, vec!["ran out of its time bound (the script's own `timeout`)".to_string()])
        );
        let (ok, why) = suite("exit 3");
        assert!(!ok && why.len() == 1 && why[0].contains("before its checks said why"), "{why:?}");
        // The held lane finds the same.
        let held =
            run_suite(Command::new("bash").args(["-c", "echo 'FAIL: x'; exit 1"]), Some("x")).expect("bash runs");
        assert_eq!(held, (false, vec!["FAIL: x".to_string()]));
    }

    /// Every suite that says it runs beside the others names no namespace
    /// of the first lane, and the interop libraries name theirs only
    /// through the prefix (else a suite in the second lane would build or
    /// take down the first lane's topology).
    #[test]
    fn the_suites_beside_the_interop_lane_use_namespaces_of_their_own() {
        let root = crate::root();
        for lib in INTEROP_LIBS {
            let text = std::fs::read_to_string(root.join(lib)).expect("readable");
            assert!(!text.contains("wsi-"), "{lib} names a wsi- namespace");
        }
        let lib = std::fs::read_to_string(root.join(INTEROP_LIBS[0])).expect("readable");
        assert!(lib.contains("NSP=${WASMSEC_NS_PREFIX:-wsi}"), "lib.sh's prefix");
        let all = scripts(&root, &["tests/e2e", "tests/interop", "tests/helm"], None);
        let marked = |p: &&PathBuf| std::fs::read_to_string(p).is_ok_and(|t| t.lines().any(|l| l.starts_with(BESIDE)));
        let beside: Vec<&PathBuf> = all.iter().filter(marked).collect();
        assert!(beside.len() >= 5, "only {} suites say they run beside", beside.len());
        for p in beside {
            assert!(runs_beside(p), "{}", p.display());
        }
        // And the check can fail.
        let dir = std::env::temp_dir().join(format!("xtask-beside-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let wrong = dir.join("test-wrong.sh");
        std::fs::write(&wrong, format!("#!/bin/bash\n{BESIDE} (no)\nnsx wsi-gwa true\n")).expect("written");
        let unmarked = dir.join("test-unmarked.sh");
        std::fs::write(&unmarked, "#!/bin/bash\ntrue\n").expect("written");
        assert!(!runs_beside(&wrong) && !runs_beside(&unmarked));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
