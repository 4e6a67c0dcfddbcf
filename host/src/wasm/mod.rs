//! The only module that knows wasmtime. It owns `bindgen!` ([`bindings`]),
//! the sandbox every guest runs in ([`sandbox`]), and the two components'
//! host sides ([`esp`], [`ike`]); [`Runtime`] compiles them once and makes
//! instances.
//!
//! Guests get no WASI at all: the ESP component imports only
//! `wasmsec:crypto/{types,packets}`, the IKE component randomness and the
//! key schedule on handles. Each call runs under an epoch deadline and each
//! store under a memory limit; a trap poisons only that instance.
pub(crate) mod bindings;
pub mod esp;
pub mod ike;
mod memory_slots;
pub mod policy;
pub(crate) mod sandbox;
pub use sandbox::POOL_TENANTS;
pub use sandbox::PolicyEngines;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        _ => WitCryptoError::Internal,
    }
}

/// Compiled components and the engines that run them; shared by all threads.
pub struct Runtime {
    /// The ESP guests' engine (memory slots, `sandbox::engine`).
    engine: Engine,
    /// Its memory slots.
    esp_slots: Arc<memory_slots::MemorySlots>,
    /// The ESP components, compiled and linked: the project's first, then
    /// any other a tunnel names (`esp_component`), one per guest group.
    esp: Vec<esp::EspPre>,
    /// The IKE component, compiled and linked (None: not loaded).
    ike: Option<ike::IkePre>,
    /// The engine the IKE component is compiled for (one instance).
    ike_engine: Engine,
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
        let esp = vec![esp::EspPre::load(&engine, &load(&engine, esp_path, "ESP")?)?];
        let ike_engine = sandbox::ike_engine()?;
        let ike = match ike_path {
            Some(p) => Some(ike::IkePre::load(&ike_engine, &load(&ike_engine, p, "IKE")?)?),
            None => None,
        };
        let policy_engines = sandbox::PolicyEngines::new()?;
        let engines = [&engine, &ike_engine, &policy_engines.small, &policy_engines.runtime];
        let stop_ticker = sandbox::start_epoch_ticker(&engines)?;
        Ok(Runtime { engine, esp_slots, esp, ike, ike_engine, policy_engines, stop_ticker })
    }

    /// Guest instances alive on the engines of many small guests, by
    /// engine: ESP guests, and policy modules without a language runtime
    /// (each holds one memory slot).
    pub fn instances(&self) -> [(&'static str, usize); 2] {
        [("esp", self.esp_slots.in_use()), ("policy", self.policy_engines.small_slots.in_use())]
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
        self.ike_instance_from(ike::IkeState::new(vault, esp_keys))
    }

    /// An IKE instance with this host state (a replacement keeps its
    /// predecessor's).
    pub fn ike_instance_from(&self, state: ike::IkeState) -> Result<ike::IkeInstance> {
        let pre = self.ike.as_ref().ok_or_else(|| anyhow::anyhow!("the IKE component is not loaded"))?;
        pre.instantiate(&self.ike_engine, state)
    }

    /// Compile another ESP component, for the tunnels that name it; returns
    /// its guest group's index.
    pub fn add_esp(&mut self, path: &Path) -> Result<usize> {
        self.esp.push(esp::EspPre::load(&self.engine, &load(&self.engine, path, "ESP")?)?);
        Ok(self.esp.len() - 1)
    }

    /// How many ESP components (guest groups) there are.
    pub fn esp_groups(&self) -> usize {
        self.esp.len()
    }

    /// A fresh instance of the project's ESP component in its own store.
    pub fn esp_instance(&self) -> Result<esp::EspInstance> {
        self.esp_instance_of(0)
    }

    /// A fresh instance of guest group `group`'s ESP component.
    pub fn esp_instance_of(&self, group: usize) -> Result<esp::EspInstance> {
        let pre = self.esp.get(group).ok_or_else(|| anyhow::anyhow!("no ESP guest group {group}"))?;
        pre.instantiate(&self.engine)
    }
}
