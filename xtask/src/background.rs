//! Work the test suite runs beside the critical path, at the lowest CPU
//! priority: the suite's own steps leave cores idle (the Rust build's
//! serial stretches, the interop tests' waits on timers and peers), and
//! these soak them up instead of adding their minutes to the run.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::root;

/// One background job: its process group, and the log it writes.
pub struct Background {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Background {
    /// Start `program args` in `root()` at nice 19 in a process group of
    /// its own, output to `log`. A job that cannot start reports so and
    /// counts as failed when finished.
    pub fn start(name: &'static str, log: &Path, program: &str, args: &[&str], env: &[(&str, &Path)]) -> Background {
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut cmd = Command::new("nice");
        cmd.args(["-n", "19", program]).args(args).current_dir(root());
        for (k, v) in env {
            cmd.env(k, v);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let spawned = File::create(log).and_then(|out| {
            cmd.stderr(out.try_clone()?).stdout(out);
            cmd.spawn()
        });
        let child = match spawned {
            Ok(c) => {
                eprintln!("xtask: {name} runs in the background ({})", log.display());
                Some(c)
            }
            Err(e) => {
                eprintln!("xtask: cannot start {name} in the background: {e}");
                None
            }
        };
        Background { name, child, log: log.to_path_buf() }
    }

    /// Wait for it; true if it succeeded. Its whole log is printed if it
    /// failed, else its last line: hundreds of lines of a build that went
    /// well would push the failed suites out of the tail CI shows.
    pub fn finish(mut self) -> bool {
        let ok = self.child.take().is_some_and(|mut c| c.wait().is_ok_and(|s| s.success()));
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let shown = if ok { out.trim_end().lines().last().unwrap_or("") } else { out.as_str() };
        println!("xtask: {} (background): {}\n{shown}", self.name, if ok { "ok" } else { "FAILED" });
        ok
    }
}

impl Drop for Background {
    /// A job still running when the suite ends early is stopped, with its
    /// whole process group (cargo's or make's children too).
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", child.id())]).status();
        }
        let _ = child.wait();
    }
}
