//! The only module that knows wasmtime. It owns `bindgen!` ([`bindings`]),
//! the sandbox every guest runs in ([`sandbox`]), and the two components'
//! host sides ([`esp`], [`ike`]); [`Runtime`] compiles them once and makes
//! instances. [`selectors`] keeps the WIT traffic selectors of installed
//! SAs in a compact form between calls.
//!
//! Guests get no WASI at all: the ESP component imports only
//! `wasmsec:crypto/{types,packets}`, the IKE component randomness and the
//! key schedule on handles. Each call runs under an epoch deadline and each
//! store under a memory limit; a trap poisons only that instance.
pub(crate) mod bindings;
pub mod esp;
mod guarded_memory;
pub mod ike;
mod memory_slots;
pub mod policy;
pub(crate) mod sandbox;
pub mod selectors;
mod state_hints;
pub use sandbox::POOL_TENANTS;
pub use sandbox::PolicyEngines;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Result;
use wasmtime::Engine;
use wasmtime::component::Component;

use bindings::esp::wasmsec::crypto::types::CryptoError as WitCryptoError;
use wasmsec_crypto::CryptoError;

/// `.context()` for wasmtime's own error type, which is not std::error::Error.
pub(crate) trait WasmContext<T> {
    fn context(self, msg: impl std::fmt::Display) -> Result<T>;
}

impl<T> WasmContext<T> for wasmtime::Result<T> {
    fn context(self, msg: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| anyhow::Error::from(e).context(msg.to_string()))
    }
}

/// The one mapping from the host's crypto errors to what a guest sees.
pub(crate) fn wit_error(e: CryptoError) -> WitCryptoError {
    match e {
        CryptoError::UnknownKey => WitCryptoError::UnknownKey,
        CryptoError::WrongKeyKind => WitCryptoError::WrongKeyKind,
        CryptoError::IntegrityFailed => WitCryptoError::IntegrityFailed,
        CryptoError::BadLength => WitCryptoError::BadLength,
        CryptoError::KeyExpired => WitCryptoError::KeyExpired,
        CryptoError::Unsupported => WitCryptoError::Unsupported,
        CryptoError::BadPeerValue => WitCryptoError::BadPeerValue,
        CryptoError::Replayed => WitCryptoError::Replayed,
        _ => WitCryptoError::Internal,
    }
}

/// How many characters of a guest's reason (a refused SA, a rejected IKE
/// SA, a failed self-test) reach the log, the admin API and IKE.
pub const GUEST_REASON_CHARS: usize = 200;
/// How many characters of one of the IKE guest's log lines reach the log.
pub const GUEST_LOG_CHARS: usize = 1000;
/// How many characters of a peer's identity, as the IKE guest shows it,
/// reach the admin view: an FQDN is at most 255 bytes (RFC 1035).
pub const GUEST_ID_CHARS: usize = 255;

/// A guest's own words, made fit for the log: control and
/// bidirectional-override characters escaped, then at most `max`
/// characters (and an ellipsis if cut). Guests are untrusted: a newline in
/// their text would forge a log line, and an unbounded text would fill the
/// log and the admin API. Borrowed when there is nothing to change (the IKE
/// guest's log lines, several per handshake, nearly always).
pub fn guest_text(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max && s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(max));
    let mut shown = 0;
    for c in s.chars() {
        // U+202A-202E and U+2066-2069 reorder what a terminal shows.
        let escape = c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        let width = if escape { c.escape_default().count() } else { 1 };
        if shown + width > max {
            out.push('\u{2026}');
            break;
        }
        shown += width;
        if escape {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Where an ESP instance's linear memory lives, which decides how the
/// compiled code guards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EspMemory {
    /// A slot of the shared mapping, every access checked against the
    /// memory's length by the compiled code: for tenants' instances, of
    /// which a PoP holds thousands (#13).
    Slot,
    /// wasmtime's default: 4 GiB of address space and a guard region, so
    /// the code checks no bounds (the MMU does): for the daemon's own
    /// routing domain, one pair per ESP component. 5 to 6 points more of
    /// raw AEAD speed in `cargo xtask bench`.
    Guarded,
}

impl EspMemory {
    /// For an instance of routing domain `domain` (0: the daemon's own).
    pub fn of_domain(domain: usize) -> EspMemory {
        if domain == 0 { EspMemory::Guarded } else { EspMemory::Slot }
    }
}

/// Compiled components and the engines that run them; shared by all threads.
pub struct Runtime {
    /// The engine of the ESP guests in memory slots (`sandbox::engine`).
    engine: Engine,
    /// Its memory slots.
    esp_slots: Arc<memory_slots::MemorySlots>,
    /// The ESP components, compiled and linked for `engine`: the project's
    /// first, then any other a tunnel names (`esp_component`), one per
    /// guest group.
    esp: Vec<esp::EspPre>,
    /// The same components compiled and linked for `guarded`.
    esp_guarded: Vec<esp::EspPre>,
    /// Live ESP instances on `guarded` (the slots count their own).
    guarded_esp_live: Arc<AtomicUsize>,
    /// The IKE component, compiled and linked (None: not loaded).
    ike: Option<ike::IkePre>,
    /// The engine of the few guests with guarded memories: the IKE
    /// component (one instance) and the daemon's own ESP pairs.
    guarded: Engine,
    /// The engines policy modules run in (many small memory slots, and
    /// one for modules with a language runtime).
    policy_engines: sandbox::PolicyEngines,
    /// Set on drop to stop the epoch ticker thread.
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

fn load(engine: &Engine, path: &Path, what: &str) -> Result<Component> {
    Component::from_file(engine, path).context(format_args!("loading {what} component {}", path.display()))
}

impl Runtime {
    /// Compile the ESP component at `esp_path` and start the epoch ticker.
    pub fn new(esp_path: &Path) -> Result<Runtime> {
        Self::with_ike(esp_path, None)
    }

    /// Also compile the IKE component, if `ike_path` is given.
    pub fn with_ike(esp_path: &Path, ike_path: Option<&Path>) -> Result<Runtime> {
        let (engine, esp_slots) = sandbox::engine()?;
        let guarded = sandbox::guarded_engine()?;
        let ike = match ike_path {
            Some(p) => Some(ike::IkePre::load(&guarded, &load(&guarded, p, "IKE")?)?),
            None => None,
        };
        let policy_engines = sandbox::PolicyEngines::new()?;
        let engines = [&engine, &guarded, &policy_engines.small, &policy_engines.runtime];
        let stop_ticker = sandbox::start_epoch_ticker(&engines)?;
        let mut rt = Runtime {
            engine,
            esp_slots,
            esp: Vec::new(),
            esp_guarded: Vec::new(),
            guarded_esp_live: Arc::default(),
            ike,
            guarded,
            policy_engines,
            stop_ticker,
        };
        rt.add_esp(esp_path)?;
        Ok(rt)
    }

    /// Guest instances alive: ESP guests (in memory slots or guarded), and
    /// policy modules without a language runtime (each in a memory slot).
    pub fn instances(&self) -> [(&'static str, usize); 2] {
        let esp = self.esp_slots.in_use() + self.guarded_esp_live.load(Ordering::Relaxed);
        [("esp", esp), ("policy", self.policy_engines.small_slots.in_use())]
    }

    /// The wasmtime engine small policy modules (no imports) are compiled for.
    pub fn policy_engine(&self) -> &Engine {
        &self.policy_engines.small
    }

    /// The engines policy modules are compiled for.
    pub fn policy_engines(&self) -> &sandbox::PolicyEngines {
        &self.policy_engines
    }

    /// A fresh IKE instance in its own store, with its secrets in `vault`
    /// and CHILD SA keys going to `esp_keys`.
    pub fn ike_instance(
        &self,
        vault: wasmsec_crypto::Vault,
        esp_keys: Arc<crate::keys::Keystore>,
    ) -> Result<ike::IkeInstance> {
        self.ike_instance_from(ike::IkeState::new(vault, esp_keys)).map_err(|not_made| not_made.0)
    }

    /// An IKE instance with this host state (a replacement keeps its
    /// predecessor's); on failure the state comes back.
    pub fn ike_instance_from(&self, state: ike::IkeState) -> Result<ike::IkeInstance, ike::NotMade> {
        match &self.ike {
            Some(pre) => pre.instantiate(&self.guarded, state),
            None => Err(Box::new((anyhow::anyhow!("the IKE component is not loaded"), state))),
        }
    }

    /// Compile another ESP component (for both memories), for the tunnels
    /// that name it; returns its guest group's index.
    pub fn add_esp(&mut self, path: &Path) -> Result<usize> {
        let slots = esp::EspPre::load(&self.engine, &load(&self.engine, path, "ESP")?)?;
        let guarded = esp::EspPre::load(&self.guarded, &load(&self.guarded, path, "ESP")?)?;
        self.esp.push(slots);
        self.esp_guarded.push(guarded);
        Ok(self.esp.len() - 1)
    }

    /// How many ESP components (guest groups) there are.
    pub fn esp_groups(&self) -> usize {
        self.esp.len()
    }

    /// A fresh instance of the project's ESP component in its own store,
    /// as a tenant's (in a memory slot).
    pub fn esp_instance(&self) -> Result<esp::EspInstance> {
        self.esp_instance_of(0, EspMemory::Slot)
    }

    /// A fresh instance of guest group `group`'s ESP component.
    pub fn esp_instance_of(&self, group: usize, memory: EspMemory) -> Result<esp::EspInstance> {
        let (list, engine, live) = match memory {
            EspMemory::Slot => (&self.esp, &self.engine, None),
            EspMemory::Guarded => (&self.esp_guarded, &self.guarded, Some(self.guarded_esp_live.clone())),
        };
        let pre = list.get(group).ok_or_else(|| anyhow::anyhow!("no ESP guest group {group}"))?;
        pre.instantiate(engine, live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_bounded_and_escaped() {
        assert_eq!(guest_text("no\nroom's", 200), "no\\nroom's");
        assert_eq!(guest_text("a\u{1b}[2Jb\u{202e}c", 200), "a\\u{1b}[2Jb\\u{202e}c");
        assert_eq!(guest_text("gr\u{fc}n", 200), "gr\u{fc}n", "printable text is kept as it is");
        let long = "x".repeat(5000);
        let cut = guest_text(&long, 200);
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('\u{2026}'));
        assert_eq!(guest_text(&"x".repeat(200), 200), "x".repeat(200), "no ellipsis at exactly the bound");
        assert!(
            matches!(guest_text("CHILD_SA 0a1b2c3d installed", 200), Cow::Borrowed(_)),
            "nothing to change, no copy"
        );
    }
}
