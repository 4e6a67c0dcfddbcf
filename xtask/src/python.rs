//! Policy modules written in Python: built with componentize-py (PyPI,
//! pinned) into components of the `policy` world in `wit/`. The tool is
//! installed once into a virtual environment under `target/`.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::build::components_dir;
use crate::root;

/// The componentize-py release the modules are built with.
const COMPONENTIZE_PY: &str = "0.25.1";

/// Python policy sources (a directory holding `app.py`) and the component
/// each becomes.
const MODULES: &[(&str, &str)] =
    &[("policies/allow-list-py", "policy-allow-list-py.wasm"), ("tests/hostile/policy-py", "hostile-policy-py.wasm")];

/// componentize-py at the pinned version, installed if missing.
fn tool() -> Result<PathBuf> {
    let venv = root().join("target/py-tools");
    let bin = venv.join("bin/componentize-py");
    let version = Command::new(&bin).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if version.is_ok_and(|v| v.contains(COMPONENTIZE_PY)) {
        return Ok(bin);
    }
    eprintln!("xtask: installing componentize-py {COMPONENTIZE_PY} (PyPI) into {}", venv.display());
    let ok = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().context("cannot run python3")?;
    if !ok.success() {
        bail!("python3 -m venv {} failed (Debian: apt-get install python3-venv)", venv.display());
    }
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", &format!("componentize-py=={COMPONENTIZE_PY}")])
        .status()
        .context("cannot run pip")?;
    if !pip.success() {
        bail!("pip install componentize-py=={COMPONENTIZE_PY} failed");
    }
    Ok(bin)
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest modification time of the files under `dir` (Python sources
/// and WIT), skipping caches.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut t = modified(dir);
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "__pycache__") {
            continue;
        }
        let m = if p.is_dir() { newest(&p) } else { modified(&p) };
        t = t.max(m);
    }
    t
}

/// Build every Python policy module whose sources or WIT changed.
pub fn policies() -> Result<()> {
    let out = components_dir();
    std::fs::create_dir_all(&out)?;
    let wit = root().join("wit");
    let mut tool_path = None;
    for (dir, file) in MODULES {
        let src = root().join(dir);
        let dest = out.join(file);
        if let Some(built) = modified(&dest)
            && newest(&src).max(newest(&wit)).is_some_and(|s| s < built)
        {
            continue;
        }
        let bin = match &tool_path {
            Some(b) => b,
            None => tool_path.insert(tool()?),
        };
        let ok = Command::new(bin)
            .current_dir(&src)
            .arg("-d")
            .arg(&wit)
            .args(["-w", "policy", "componentize", "app", "-o"])
            .arg(&dest)
            .status()
            .context("cannot run componentize-py")?;
        if !ok.success() {
            bail!("componentize-py failed for {dir}");
        }
        let len = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        eprintln!("xtask: component {} ({len} bytes, Python)", dest.display());
    }
    Ok(())
}
