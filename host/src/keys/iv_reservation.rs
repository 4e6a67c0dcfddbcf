//! IV reservations for manually keyed SAs. An IKE-derived key is new on
//! every start, so its IV counter may start at 1. A manual key is the same
//! key after every restart: if its counter started at 1 again, AES-GCM and
//! ChaCha20-Poly1305 would repeat nonces under it, which gives away the
//! XOR of plaintexts and the authentication key (RFC 4106 section 3.1,
//! RFC 7634 section 2). So the counter of a manual key is reserved ahead on
//! disk, in blocks: before an IV of a block is used, the block's end is
//! written and fsynced, and a restart resumes above the last end written.
//! A crash loses at most the unused rest of one block.
//!
//! The state file is named by an HMAC of the key (nothing about the key can
//! be learned from it), so a key moved to another tunnel or SPI keeps its
//! reservation, and changing the key starts afresh.
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use ring::hmac;

/// IVs reserved per write: one fsync per 16 Mi packets.
pub const BLOCK: u64 = 1 << 24;

/// The on-disk reservation of one manual key's IV counter.
#[derive(Debug)]
pub struct IvReservation {
    /// The state file: the highest IV counter value that may be used, in decimal.
    path: PathBuf,
    /// The end of the current block: counters up to here are on disk.
    limit: AtomicU64,
    /// Held while a new block is written.
    writing: Mutex<()>,
}

/// The state file name for a key: HMAC-SHA256 under the key itself, so the
/// name identifies the key without revealing anything of it.
pub fn state_name(keymat: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, keymat), b"wasmsec manual IV reservation v1");
    let hex: String = tag.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("manual-iv-{hex}")
}

impl IvReservation {
    /// Open (or create) the reservation of the key with state file `name`
    /// in `dir`, and reserve the first block above what earlier runs used.
    /// Returns the reservation and the first IV counter value to use.
    pub fn open(dir: &Path, name: &str) -> Result<(IvReservation, u64)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let path = dir.join(name);
        let used = match fs::read_to_string(&path) {
            Ok(t) => t
                .trim()
                .parse::<u64>()
                .with_context(|| format!("{} is corrupt: delete it only together with the key", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if used >= u64::MAX - BLOCK {
            bail!("the manual key of {} has used up its IVs: configure a new key", path.display());
        }
        let r = IvReservation { path, limit: AtomicU64::new(used), writing: Mutex::new(()) };
        r.persist(used + BLOCK)?;
        Ok((r, used + 1))
    }

    /// May counter value `iv` be used? Reserves the next block first when
    /// `iv` is past the current one; false if that cannot be written (the
    /// caller must then refuse to seal rather than risk a repeat).
    pub fn allow(&self, iv: u64) -> bool {
        if iv <= self.limit.load(Ordering::Acquire) {
            return true;
        }
        let _g = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.limit.load(Ordering::Acquire);
        if iv <= limit {
            return true;
        }
        match limit.max(iv).checked_add(BLOCK) {
            Some(next) => match self.persist(next) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %e, "cannot reserve IVs for a manual key: not sealing");
                    false
                }
            },
            None => false,
        }
    }

    /// Write `limit` durably (write a temporary file, fsync, rename, fsync
    /// the directory), then let counters up to it be used.
    fn persist(&self, limit: u64) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        writeln!(f, "{limit}")?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.limit.store(limit, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_resumes_above_everything_reserved_before() {
        let dir = std::env::temp_dir().join(format!("wasmsec-iv-test-{}", std::process::id()));
        let name = state_name(&[7; 36]);
        assert_ne!(name, state_name(&[8; 36]));
        let (r, first) = IvReservation::open(&dir, &name).unwrap();
        assert_eq!(first, 1);
        assert!(r.allow(BLOCK));
        assert!(r.allow(BLOCK + 5), "the next block is reserved on the way");
        drop(r);
        let (r, first) = IvReservation::open(&dir, &name).unwrap();
        assert_eq!(first, 2 * BLOCK + 5 + 1, "above the last block written");
        assert!(r.allow(first));
        let mode = std::fs::metadata(dir.join(&name)).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        std::fs::write(dir.join(&name), "garbage").unwrap();
        assert!(IvReservation::open(&dir, &name).is_err(), "a corrupt file is an error, not a restart at 1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
