//! The wasm runtime: one place owns `bindgen!`, the engine configuration and
//! the sandbox limits (STYLE.md, "Wasm host").
//!
//! Guests get no WASI at all: the ESP component imports only
//! `wasmsec:crypto/{types,packets}`. Each call runs under an epoch deadline
//! and each store under a memory limit; a trap poisons only that instance,
//! which [`EspInstance`] replaces, restoring its SAs from host state.
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use wasmtime::component::{Component, HasSelf, Linker, Resource};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder,
};

use crate::keystore::{CryptoError, KeyTable};
use crate::packet::PacketBuf;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmsec:worlds/esp-engine",
        additional_derives: [PartialEq],
        with: {
            "wasmsec:crypto/packets.batch": super::Batch,
        },
    });
}

pub use bindings::exports::wasmsec::esp::engine::{
    DecapVerdict, DropReason, EncapVerdict, Expiry, ExpiryCause, InboundSa, OutboundSa, SaLimits, SaState,
    TrafficSelector,
};
use bindings::wasmsec::crypto::packets::{HostBatch, OpenOp, Opened, SealOp};
use bindings::wasmsec::crypto::types::CryptoError as WitCryptoError;

/// `.context()` for wasmtime's own error type, which is not std::error::Error.
pub(crate) trait WasmContext<T> {
    fn context(self, msg: impl std::fmt::Display) -> Result<T>;
}

impl<T> WasmContext<T> for wasmtime::Result<T> {
    fn context(self, msg: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| anyhow::Error::from(e).context(msg.to_string()))
    }
}

/// Marker type of the `batch` resource: the batch itself lives in the store
/// ([`GuestState::batch`]); a call lends it to the guest for its duration.
pub struct Batch;

/// Memory a guest instance may grow to.
pub(crate) const GUEST_MEMORY_LIMIT: usize = 32 << 20;
/// Epoch ticks a single call may run (one tick per [`EPOCH_TICK`]).
pub(crate) const CALL_DEADLINE_TICKS: u64 = 50;
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-store host state.
pub struct GuestState {
    limits: StoreLimits,
    /// The key handles this instance may use.
    pub keys: KeyTable,
    /// The batch lent to the guest during `encap`/`decap`.
    pub batch: Vec<PacketBuf>,
    /// Packets of `batch` in use (the vector is reused and never shrinks).
    pub count: usize,
}

fn wit_error(e: CryptoError) -> WitCryptoError {
    match e {
        CryptoError::UnknownKey => WitCryptoError::UnknownKey,
        CryptoError::WrongKeyKind => WitCryptoError::WrongKeyKind,
        CryptoError::IntegrityFailed => WitCryptoError::IntegrityFailed,
        CryptoError::BadLength => WitCryptoError::BadLength,
        CryptoError::KeyExpired => WitCryptoError::KeyExpired,
    }
}

impl bindings::wasmsec::crypto::types::Host for GuestState {}
impl bindings::wasmsec::crypto::packets::Host for GuestState {}

impl HostBatch for GuestState {
    fn count(&mut self, _: Resource<Batch>) -> u32 {
        self.count as u32
    }

    fn heads(&mut self, _: Resource<Batch>, head_len: u32) -> Vec<u8> {
        let h = (head_len as usize).min(256);
        let mut out = vec![0u8; self.count * (4 + h)];
        for (p, rec) in self.batch[..self.count].iter().zip(out.chunks_exact_mut(4 + h)) {
            let d = p.data();
            rec[..4].copy_from_slice(&(d.len() as u32).to_be_bytes());
            let n = d.len().min(h);
            rec[4..4 + n].copy_from_slice(&d[..n]);
        }
        out
    }

    fn seal(&mut self, _: Resource<Batch>, ops: Vec<SealOp>) -> Vec<Result<(), WitCryptoError>> {
        ops.iter()
            .map(|op| {
                let i = op.index as usize;
                if i >= self.count {
                    return Err(WitCryptoError::BadLength);
                }
                let k = self.keys.get(op.key).map_err(wit_error)?;
                let mut header = [0u8; 8];
                header[..4].copy_from_slice(&op.spi.to_be_bytes());
                header[4..].copy_from_slice(&op.seq_low.to_be_bytes());
                // The default padding 1, 2, 3, ... (RFC 4303 section 2.4).
                let mut trailer = [0u8; wasmsec_wire::esp::MAX_TRAILER_LEN];
                let pad = usize::from(op.pad_length);
                for (j, b) in trailer[..pad].iter_mut().enumerate() {
                    *b = (j + 1) as u8;
                }
                trailer[pad] = op.pad_length;
                trailer[pad + 1] = op.next_header;
                k.seal(&mut self.batch[i], &header, op.esn_high, &trailer[..pad + 2]).map_err(wit_error)
            })
            .collect()
    }

    fn open(&mut self, _: Resource<Batch>, ops: Vec<OpenOp>) -> Vec<Result<Opened, WitCryptoError>> {
        ops.iter()
            .map(|op| {
                let i = op.index as usize;
                if i >= self.count {
                    return Err(WitCryptoError::BadLength);
                }
                let k = self.keys.get(op.key).map_err(wit_error)?;
                let p = &mut self.batch[i];
                k.open(p, op.esn_high).map_err(wit_error)?;
                let d = p.data();
                let n = d.len();
                Ok(Opened { plaintext_len: n as u32, pad_length: d[n - 2], next_header: d[n - 1] })
            })
            .collect()
    }

    fn drop(&mut self, _: Resource<Batch>) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// Compiled components and the engine that runs them; shared by all threads.
pub struct Runtime {
    engine: Engine,
    esp: bindings::EspEnginePre<GuestState>,
    ike: Option<crate::ike::IkeEnginePre>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Compile the ESP component at `esp_path` and start the epoch ticker.
    pub fn new(esp_path: &Path) -> Result<Runtime> {
        Self::with_ike(esp_path, None)
    }

    /// Also compile the IKE component, if `ike_path` is given.
    pub fn with_ike(esp_path: &Path, ike_path: Option<&Path>) -> Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(256)
            .total_core_instances(256)
            .total_memories(256)
            .total_tables(256)
            .max_memory_size(GUEST_MEMORY_LIMIT);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .wasm_component_model(true);
        let engine = Engine::new(&config).context("configuring wasmtime")?;
        let component = Component::from_file(&engine, esp_path)
            .context(format_args!("loading ESP component {}", esp_path.display()))?;
        let mut linker = Linker::<GuestState>::new(&engine);
        bindings::EspEngine::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).context("linking host imports")?;
        let pre = linker.instantiate_pre(&component).context("linking ESP component")?;
        let esp = bindings::EspEnginePre::new(pre).context("ESP component does not export wasmsec:esp/engine")?;
        let ike = match ike_path {
            Some(p) => Some(crate::ike::IkeEnginePre::load(&engine, p)?),
            None => None,
        };
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                e.increment_epoch();
            }
        })?;
        Ok(Runtime { engine, esp, ike, stop_ticker })
    }

    /// A fresh IKE instance in its own store, with its secrets in `vault`
    /// and CHILD SA keys going to `esp_keys`.
    pub fn ike_instance(
        &self,
        vault: wasmsec_crypto::Vault,
        esp_keys: Arc<crate::keystore::Keystore>,
    ) -> Result<crate::ike::IkeInstance> {
        let pre = self.ike.as_ref().ok_or_else(|| anyhow::anyhow!("the IKE component is not loaded"))?;
        pre.instantiate(&self.engine, vault, esp_keys, CALL_DEADLINE_TICKS)
    }

    /// A fresh ESP instance in its own store.
    pub fn esp_instance(&self) -> Result<EspInstance> {
        let state = GuestState {
            limits: StoreLimitsBuilder::new().memory_size(GUEST_MEMORY_LIMIT).instances(4).build(),
            keys: KeyTable::default(),
            batch: Vec::new(),
            count: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(CALL_DEADLINE_TICKS);
        let bindings = self.esp.instantiate(&mut store).context("instantiating ESP component")?;
        Ok(EspInstance { store, bindings })
    }
}

/// One ESP engine instance and its store.
pub struct EspInstance {
    pub store: Store<GuestState>,
    bindings: bindings::EspEngine,
}

impl EspInstance {
    fn arm(&mut self) {
        self.store.set_epoch_deadline(CALL_DEADLINE_TICKS);
    }

    pub fn install_outbound(&mut self, sa: &OutboundSa) -> Result<Result<(), String>> {
        self.arm();
        let e = self.bindings.wasmsec_esp_engine();
        Ok(e.call_install_outbound(&mut self.store, sa)?)
    }

    pub fn install_inbound(&mut self, sa: &InboundSa) -> Result<Result<(), String>> {
        self.arm();
        let e = self.bindings.wasmsec_esp_engine();
        Ok(e.call_install_inbound(&mut self.store, sa)?)
    }

    pub fn remove_outbound(&mut self, spi: u32) -> Result<bool> {
        self.arm();
        let e = self.bindings.wasmsec_esp_engine();
        Ok(e.call_remove_outbound(&mut self.store, spi)?)
    }

    pub fn remove_inbound(&mut self, spi: u32) -> Result<bool> {
        self.arm();
        let e = self.bindings.wasmsec_esp_engine();
        Ok(e.call_remove_inbound(&mut self.store, spi)?)
    }

    pub fn sa_states(&mut self) -> Result<Vec<SaState>> {
        self.arm();
        let e = self.bindings.wasmsec_esp_engine();
        Ok(e.call_sa_states(&mut self.store)?)
    }

    /// The SAs that passed a soft or hard limit since the last call.
    pub fn take_expiries(&mut self) -> Result<Vec<Expiry>> {
        self.arm();
        let e = self.bindings.wasmsec_esp_engine();
        Ok(e.call_take_expiries(&mut self.store)?)
    }

    /// Encapsulate the `count` packets in `store.data().batch`.
    /// An `Err` is a trap: the instance must be replaced.
    pub fn encap(&mut self) -> Result<Vec<EncapVerdict>> {
        self.arm();
        let e = self.bindings.wasmsec_esp_engine();
        Ok(e.call_encap(&mut self.store, Resource::new_borrow(0))?)
    }

    /// Decapsulate the `count` packets in `store.data().batch`.
    pub fn decap(&mut self) -> Result<Vec<DecapVerdict>> {
        self.arm();
        let e = self.bindings.wasmsec_esp_engine();
        Ok(e.call_decap(&mut self.store, Resource::new_borrow(0))?)
    }
}

impl Default for SaLimits {
    /// No limits (manual SAs; CHILD SAs get theirs from the IKE engine).
    fn default() -> Self {
        SaLimits { soft_bytes: 0, soft_packets: 0, hard_bytes: 0, hard_packets: 0 }
    }
}

impl DropReason {
    pub const COUNT: usize = 11;

    /// Every reason, in `index` order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::NoPolicy,
        DropReason::Malformed,
        DropReason::UnknownSpi,
        DropReason::Replay,
        DropReason::IntegrityFailed,
        DropReason::BadTrailer,
        DropReason::SelectorMismatch,
        DropReason::SeqExhausted,
        DropReason::CryptoRefused,
        DropReason::Dummy,
        DropReason::SaExpired,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoPolicy => "no_policy",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::Replay => "replay",
            DropReason::IntegrityFailed => "integrity_failed",
            DropReason::BadTrailer => "bad_trailer",
            DropReason::SelectorMismatch => "selector_mismatch",
            DropReason::SeqExhausted => "seq_exhausted",
            DropReason::CryptoRefused => "crypto_refused",
            DropReason::Dummy => "dummy",
            DropReason::SaExpired => "sa_expired",
        }
    }
}
