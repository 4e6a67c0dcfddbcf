//! Reloading the policy module: on a change of its file (inotify on its
//! directory, on the ops thread), on `wasmsec reload`, or at start.
//! A module that fails any step is refused with the reason in the log,
//! and the one serving stays.
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, bail};
use tracing::{info, warn};

use super::{PolicySlot, Source, load};

/// What reloading needs: the module's file, the artifact cache, the slot.
pub struct Reloader {
    pub slot: Arc<PolicySlot>,
    pub file: PathBuf,
    pub cache: Option<PathBuf>,
    engines: crate::wasm::PolicyEngines,
    /// The hash last tried (served or refused): an event that leaves the
    /// bytes as they were does nothing.
    last: Mutex<Option<String>>,
    /// Set when its tenant is removed: its watcher ends.
    stopped: std::sync::atomic::AtomicBool,
}

impl Reloader {
    pub fn new(
        slot: Arc<PolicySlot>,
        engines: crate::wasm::PolicyEngines,
        file: PathBuf,
        cache: Option<PathBuf>,
    ) -> Reloader {
        Reloader { slot, file, cache, engines, last: Mutex::new(None), stopped: Default::default() }
    }

    /// Stop watching (its tenant is gone).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Load the file and swap it in if it passes; `noticed` is when the
    /// change was seen. Returns how it was compiled, or why it was refused
    /// (also logged), or `None` if the bytes are the ones last tried.
    pub fn reload(&self, noticed: Instant) -> Result<Option<Source>> {
        // The module and its cases file: a change of either reloads.
        let mut bytes = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) => bail!("cannot read {}: {e}", self.file.display()),
        };
        bytes.extend(std::fs::read(super::cases::path_for(&self.file)).unwrap_or_default());
        let hex = crate::wasm::policy::sha256_hex(&bytes);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_deref() == Some(hex.as_str()) {
                return Ok(None);
            }
            *last = Some(hex);
        }
        let checked = load(&self.engines, &self.file, self.cache.as_deref(), noticed).and_then(|(served, source)| {
            let n = check_cases(&served, &self.file)?;
            Ok((served, source, n))
        });
        match checked {
            Ok((served, source, cases)) => {
                let hash = served.hash[..16].to_string();
                self.slot.swap(served);
                let ms = noticed.elapsed().as_secs_f64() * 1e3;
                info!(policy = %self.file.display(), sha256 = %hash, source = ?source, cases,
                      ms_change_to_serving = format!("{ms:.1}"), "policy module serving (self-test passed)");
                Ok(Some(source))
            }
            Err(e) => {
                self.slot.stats.refused.fetch_add(1, Ordering::Relaxed);
                let serving = self.slot.current().map_or("none".to_string(), |m| m.hash[..16].to_string());
                warn!(policy = %self.file.display(), serving = %serving,
                      "policy module refused, the previous one keeps serving: {e:#}");
                Err(e)
            }
        }
    }
}

/// Run the operator's cases beside the module (if any) on it; returns how
/// many passed, or the first that did not.
fn check_cases(served: &super::Served, file: &Path) -> Result<usize> {
    let Some(cases) = super::cases::load(file)? else { return Ok(0) };
    for (i, c) in cases.iter().enumerate() {
        let got =
            served.authorize(&c.request).map_err(|e| anyhow::anyhow!("case {}: the module failed: {e:#}", i + 1))?;
        super::cases::check(c, &got).map_err(|why| anyhow::anyhow!("case {} of {}: {why}", i + 1, cases.len()))?;
    }
    Ok(cases.len())
}

/// Watch the module's directory until stop, on a thread of its own
/// (compiling a module takes a while; nothing else waits for it). Every
/// burst of events reloads.
pub fn spawn(r: Arc<Reloader>) -> Result<std::thread::JoinHandle<()>> {
    let dir = r.file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let fd = crate::sys::watch_dir(&dir).map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", dir.display()))?;
    info!(dir = %dir.display(), "watching the policy module's directory");
    Ok(std::thread::Builder::new().name("policy-watch".into()).spawn(move || {
        while !crate::sys::stop_requested() && !r.stopped.load(Ordering::Relaxed) {
            match crate::sys::poll_readable(&[fd.as_raw_fd()], 250) {
                Ok(ready) if ready.first() == Some(&true) => {}
                Ok(_) => continue,
                Err(e) => return warn!(error = %e, "policy watcher stopped; reload with `wasmsec reload`"),
            }
            let noticed = Instant::now();
            // Which file changed does not matter: the module's hash does.
            crate::sys::drain(fd.as_raw_fd());
            let _ = r.reload(noticed);
        }
    })?)
}
