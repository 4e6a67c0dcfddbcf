//! The ESP component under wasmtime: its one import (`wasmsec:crypto/packets`,
//! sealing and opening the lent batch in place with granted keys) and a
//! typed wrapper around its exports.
use anyhow::Result;
use wasmsec_wire::esp;
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime::{Engine, Store, StoreLimits};

use super::bindings::esp as b;
use super::{WasmContext, sandbox, wit_error};
use crate::keys::{EspKey, KeyTable};
use crate::packet::PacketBuf;

pub use b::exports::wasmsec::esp::engine::{
    DecapVerdict, DropReason, EncapVerdict, Expiry, ExpiryCause, InboundSa, OutboundSa, SaState,
};
use b::wasmsec::crypto::packets::{HostBatch, OpenOp, Opened, SealOp};
use b::wasmsec::crypto::types::CryptoError as WitCryptoError;
pub use b::wasmsec::net::types::{SaLimits, TrafficSelector};

/// Marker type of the `batch` resource: the batch itself lives in the store
/// ([`GuestState::batch`]); a call lends it to the guest for its duration.
pub struct Batch;

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

impl sandbox::Limited for GuestState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }
}

impl GuestState {
    /// Packet `index` of the lent batch and the key `key` names: the guest
    /// names both, so both are checked.
    fn packet_and_key(&mut self, index: u32, key: u64) -> Result<(&mut PacketBuf, &EspKey), WitCryptoError> {
        let i = index as usize;
        if i >= self.count {
            return Err(WitCryptoError::BadLength);
        }
        let k = self.keys.get(key).map_err(wit_error)?;
        Ok((&mut self.batch[i], k))
    }
}

impl b::wasmsec::crypto::types::Host for GuestState {}
impl b::wasmsec::crypto::packets::Host for GuestState {}
impl b::wasmsec::net::types::Host for GuestState {}

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
                let (p, k) = self.packet_and_key(op.index, op.key)?;
                let header = esp::Repr { spi: op.spi, sequence_number: op.seq_low };
                let trailer = esp::Trailer::new(op.pad_length, op.next_header);
                k.seal(p, &header, op.esn_high, trailer.as_bytes()).map_err(wit_error)
            })
            .collect()
    }

    fn open(&mut self, _: Resource<Batch>, ops: Vec<OpenOp>) -> Vec<Result<Opened, WitCryptoError>> {
        ops.iter()
            .map(|op| {
                let (p, k) = self.packet_and_key(op.index, op.key)?;
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

/// The compiled ESP component, linked and ready to instantiate.
pub(crate) struct EspPre(b::EspEnginePre<GuestState>);

impl EspPre {
    pub fn load(engine: &Engine, component: &wasmtime::component::Component) -> Result<EspPre> {
        let mut linker = Linker::<GuestState>::new(engine);
        b::EspEngine::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).context("linking host imports")?;
        let pre = linker.instantiate_pre(component).context("linking ESP component")?;
        Ok(EspPre(b::EspEnginePre::new(pre).context("ESP component does not export wasmsec:esp/engine")?))
    }

    pub fn instantiate(&self, engine: &Engine) -> Result<EspInstance> {
        let state =
            GuestState { limits: sandbox::store_limits(), keys: KeyTable::default(), batch: Vec::new(), count: 0 };
        let mut store = sandbox::new_store(engine, state);
        let bindings = self.0.instantiate(&mut store).context("instantiating ESP component")?;
        Ok(EspInstance { store, bindings })
    }
}

/// One ESP engine instance and its store. Every call's outer `Err` is a
/// trap (the instance is then unusable), the inner one the engine's answer.
pub struct EspInstance {
    pub store: Store<GuestState>,
    bindings: b::EspEngine,
}

impl EspInstance {
    fn e(&mut self) -> (&b::exports::wasmsec::esp::engine::Guest, &mut Store<GuestState>) {
        self.store.set_epoch_deadline(sandbox::CALL_DEADLINE_TICKS);
        (self.bindings.wasmsec_esp_engine(), &mut self.store)
    }

    pub fn install_outbound(&mut self, sa: &OutboundSa) -> Result<Result<(), String>> {
        let (e, s) = self.e();
        Ok(e.call_install_outbound(s, sa)?)
    }

    pub fn install_inbound(&mut self, sa: &InboundSa) -> Result<Result<(), String>> {
        let (e, s) = self.e();
        Ok(e.call_install_inbound(s, sa)?)
    }

    pub fn remove_outbound(&mut self, spi: u32) -> Result<bool> {
        let (e, s) = self.e();
        Ok(e.call_remove_outbound(s, spi)?)
    }

    pub fn remove_inbound(&mut self, spi: u32) -> Result<bool> {
        let (e, s) = self.e();
        Ok(e.call_remove_inbound(s, spi)?)
    }

    pub fn sa_states(&mut self) -> Result<Vec<SaState>> {
        let (e, s) = self.e();
        Ok(e.call_sa_states(s)?)
    }

    /// The SAs that passed a soft or hard limit since the last call.
    pub fn take_expiries(&mut self) -> Result<Vec<Expiry>> {
        let (e, s) = self.e();
        Ok(e.call_take_expiries(s)?)
    }

    /// Encapsulate the `count` packets in `store.data().batch`.
    pub fn encap(&mut self) -> Result<Vec<EncapVerdict>> {
        let (e, s) = self.e();
        Ok(e.call_encap(s, Resource::new_borrow(0))?)
    }

    /// Decapsulate the `count` packets in `store.data().batch`.
    pub fn decap(&mut self) -> Result<Vec<DecapVerdict>> {
        let (e, s) = self.e();
        Ok(e.call_decap(s, Resource::new_borrow(0))?)
    }
}

impl TrafficSelector {
    /// Any protocol and port, addresses `start` to `end` (4 or 16 bytes each).
    pub fn addresses(start: Vec<u8>, end: Vec<u8>) -> TrafficSelector {
        TrafficSelector { ip_protocol: 0, start_port: 0, end_port: u16::MAX, start_address: start, end_address: end }
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
