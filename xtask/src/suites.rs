//! The test suites: which of them run beside which, and how each one is
//! run and reported.
//!
//! Most interop suites build their topology in the same namespaces
//! (tests/interop/lib.sh's `wsi-*`), so they run one after another. The
//! others have namespaces of their own (the shared harness's `iop-*`, the
//! demo's `wsdemo-*`, the tenant suites' `wst-*`, ...) or none, and say so
//! with the line [`BESIDE`]; they run in a second lane at the same time.
//! Most suites spend their minutes waiting on timers and peers, so two
//! lanes on two cores take about half the wall time of one (CI's budget
//! is 45 minutes).
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};

/// The line a suite carries when it shares no namespace with the suites
/// of tests/interop/lib.sh's topology (checked by the unit test below).
pub const BESIDE: &str = "# xtask: beside the interop suites";

/// The shared interop library, whose topology's namespaces are fixed.
const INTEROP_LIB: &str = "tests/interop/lib.sh";

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
/// does not clash with the interop topology (`topology`: the functions of
/// [`interop_functions`]). One that says so wrongly runs in the interop
/// lane, with a warning.
pub fn runs_beside(path: &Path, topology: &[String]) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    if !text.lines().any(|l| l.starts_with(BESIDE)) {
        return false;
    }
    match clash(path, &text, topology) {
        None => true,
        Some(why) => {
            eprintln!(
                "xtask: warning: {} says it runs beside the interop suites, but {why}: it runs among them",
                path.display()
            );
            false
        }
    }
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
/// (or cargo test's `test ... FAILED`),
/// or that it ran out of its own time bound (`timeout`'s 124). The
/// reasons are repeated at the close, where CI's tail of the output shows
/// them. Its output is passed through as it comes, or with `held` (the
/// step's name) printed as one block when it ends.
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
        let stdout = std::io::stdout();
        for line in std::io::BufReader::new(reader).split(b'\n').map_while(Result::ok) {
            if live {
                let mut out = stdout.lock();
                let _ = out.write_all(&line).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush());
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
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "xtask: ---- the output of {name} (it ran beside the interop suites) ----");
        let _ = out.write_all(&block).and_then(|_| out.flush());
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

/// The functions of `lib` that name a fixed namespace with `prefix`,
/// directly or through another such function. Functions start with a
/// line `name() {` and end on it or at the next line `}`.
fn functions_naming(lib: &str, prefix: &str) -> Vec<String> {
    let mut bodies: Vec<(String, String)> = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in lib.lines() {
        if let Some((_, body)) = open.as_mut() {
            body.push_str(line);
            body.push('\n');
            if line == "}" {
                bodies.extend(open.take());
            }
            continue;
        }
        let Some((name, rest)) = line.split_once("() {") else { continue };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if rest.trim_end().ends_with('}') {
            bodies.push((name.to_string(), rest.to_string()));
        } else {
            open = Some((name.to_string(), rest.to_string()));
        }
    }
    let mut naming: Vec<String> = Vec::new();
    loop {
        let before = naming.len();
        for (name, body) in &bodies {
            if !naming.contains(name) && (body.contains(prefix) || naming.iter().any(|n| calls(body, n))) {
                naming.push(name.clone());
            }
        }
        if naming.len() == before {
            return naming;
        }
    }
}

/// True if `text` has `function` as a word (a call, in a shell script).
fn calls(text: &str, function: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(function).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + function.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
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

/// Why the suite at `path` (its `text`) may not run beside the others:
/// it names a namespace of the interop topology, calls a function of
/// tests/interop/lib.sh (or hostile-lib.sh) that does (`topology`), or
/// sources lib.sh and keeps its list of namespaces, which lib.sh's
/// cleanup takes down. None if it may.
pub fn clash(path: &Path, text: &str, topology: &[String]) -> Option<String> {
    if text.contains("wsi-") {
        return Some("it names a wsi- namespace".into());
    }
    if let Some(f) = topology.iter().find(|f| calls(text, f)) {
        return Some(format!("it calls {f}, which names wsi- namespaces"));
    }
    let sources_lib = path.parent().is_some_and(|d| d.ends_with("tests/interop"))
        && text.contains("source \"$(dirname \"$0\")/lib.sh\"");
    if sources_lib && !text.lines().any(|l| l.starts_with("NS=")) {
        return Some("it keeps lib.sh's namespace list (NS), which its cleanup takes down".into());
    }
    None
}

/// The functions of the interop libraries that name their namespaces.
pub fn interop_functions(root: &Path) -> Vec<String> {
    let mut all = Vec::new();
    for lib in [INTEROP_LIB, "tests/interop/hostile-lib.sh"] {
        let text = std::fs::read_to_string(root.join(lib)).unwrap_or_default();
        all.extend(functions_naming(&text, "wsi-"));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn functions_that_name_the_namespaces_are_found_through_calls() {
        let lib = "a() { nsx wsi-gwa true; }\nb() {\n    a\n}\nc() {\n    echo abc\n}\nd() { echo b_not; }\n";
        let mut found = functions_naming(lib, "wsi-");
        found.sort();
        assert_eq!(found, ["a", "b"]);
        assert!(calls("x; b\n", "b") && !calls("b_not", "b") && !calls("ab", "b"));
        let (e2e, interop) = (Path::new("tests/e2e/test-x.sh"), Path::new("/r/tests/interop/test-x.sh"));
        assert!(clash(e2e, "topo_up\n", &["topo_up".into()]).is_some());
        assert!(clash(e2e, "my_topo_up\n", &["topo_up".into()]).is_none());
        assert!(clash(e2e, "nsx wsi-gwa\n", &[]).is_some());
        let sourcing = "source \"$(dirname \"$0\")/lib.sh\"\n";
        assert!(clash(interop, sourcing, &[]).is_some());
        assert!(clash(interop, &format!("{sourcing}NS=(wsx-a)\n"), &[]).is_none());
        assert!(clash(e2e, sourcing, &[]).is_none());
    }

    /// Every suite that says it runs beside the others shares no
    /// namespace with the interop topology, and the interop library's
    /// topology functions are found (else the check would pass vacuously).
    #[test]
    fn the_suites_beside_the_interop_lane_use_namespaces_of_their_own() {
        let root = crate::root();
        let functions = interop_functions(&root);
        for f in ["topo_up", "topo_up_nat"] {
            assert!(functions.iter().any(|g| g == f), "{f} not found among {functions:?}");
        }
        let all = scripts(&root, &["tests/e2e", "tests/interop", "tests/helm"], None);
        let marked = |p: &&PathBuf| std::fs::read_to_string(p).is_ok_and(|t| t.lines().any(|l| l.starts_with(BESIDE)));
        let beside: Vec<&PathBuf> = all.iter().filter(marked).collect();
        assert!(beside.len() >= 5, "only {} suites say they run beside", beside.len());
        for p in beside {
            let text = std::fs::read_to_string(p).expect("readable");
            assert_eq!(clash(p, &text, &functions), None, "{}", p.display());
            assert!(runs_beside(p, &functions), "{}", p.display());
        }
    }
}
