//! The ESP component under wasmtime: its one import (`wasmsec:crypto/packets`,
//! sealing and opening the lent batch in place with granted keys) and a
//! typed wrapper around its exports.
use anyhow::Result;
use wasmsec_wire::esp;
use wasmsec_wire::heads::Heads;
use wasmtime::component::{HasSelf, Resource};
use wasmtime::{Engine, Store};

use super::bindings::esp as b;
use super::{WasmContext, sandbox, wit_error};
use crate::keys::{EspKey, KeyTable, KeyUse};
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

/// What the host did to one packet of the lent batch during the current
/// call. Verdicts are checked against it: the data path sends only what was
/// sealed, to the peer of the SA that sealed it, and delivers only what
/// opened, at most at its opened length. Anything else is the guest lying.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mark {
    /// Neither sealed nor opened: still what the wire or the LAN gave us.
    #[default]
    Untouched,
    /// Sealed by outbound SA `spi`, whose packets go to peer index `peer`.
    Sealed { peer: u32, spi: u32 },
    /// Opened (ICV verified) by inbound SA `spi`; `len` bytes of plaintext
    /// with padding and the ESP trailer, from an ESP packet of `esp_len`.
    Opened { len: u32, spi: u32, esp_len: u32 },
}

/// Per-store host state.
pub struct GuestState {
    limits: sandbox::GuestLimits,
    /// The key handles this instance may use, each bound to one SA and direction.
    pub keys: KeyTable,
    /// The batch lent to the guest during `encap`/`decap`.
    pub batch: Vec<PacketBuf>,
    /// Packets of `batch` in use (the vector is reused and never shrinks).
    pub count: usize,
    /// What became of each packet of the batch during the current call.
    pub marks: Vec<Mark>,
    /// Requests of the current call the host refused (wrong key use, bad
    /// index, a second seal or open of one packet): guest protocol errors.
    pub refusals: u64,
}

impl sandbox::Limited for GuestState {
    fn limits(&mut self) -> &mut sandbox::GuestLimits {
        &mut self.limits
    }
}

impl GuestState {
    /// Start a call on the first `count` packets of the batch.
    pub fn lend(&mut self, count: usize) {
        self.count = count.min(self.batch.len());
        self.marks.clear();
        self.marks.resize(self.count, Mark::Untouched);
        self.refusals = 0;
    }

    fn seal_one(&mut self, op: &SealOp) -> Result<(), WitCryptoError> {
        let checked = check(&self.keys, &self.marks, op.index, op.key);
        // Only an outbound key seals, and only under its own SA's SPI.
        let (i, k, peer) = match checked {
            Ok((i, k, KeyUse::Seal { spi, peer })) if spi == op.spi => (i, k, peer),
            Ok(_) => return Err(refused(&mut self.refusals, WitCryptoError::WrongKeyKind)),
            Err(e) => return Err(refused(&mut self.refusals, e)),
        };
        let header = esp::Repr { spi: op.spi, sequence_number: op.seq_low };
        k.seal(&mut self.batch[i], &header, op.esn_high, op.pad_length, op.next_header).map_err(wit_error)?;
        self.marks[i] = Mark::Sealed { peer, spi: op.spi };
        Ok(())
    }

    fn open_one(&mut self, op: &OpenOp) -> Result<Opened, WitCryptoError> {
        let checked = check(&self.keys, &self.marks, op.index, op.key);
        // Only an inbound key opens, and only packets that carry its SPI.
        let (i, k, spi) = match checked {
            Ok((i, k, KeyUse::Open { spi }))
                if esp::Packet::new_checked(self.batch[i].data()).is_ok_and(|e| e.spi() == spi) =>
            {
                (i, k, spi)
            }
            Ok(_) => return Err(refused(&mut self.refusals, WitCryptoError::WrongKeyKind)),
            Err(e) => return Err(refused(&mut self.refusals, e)),
        };
        let p = &mut self.batch[i];
        let esp_len = p.len();
        k.open(p, op.esn_high).map_err(wit_error)?;
        let d = p.data();
        let n = d.len();
        self.marks[i] = Mark::Opened { len: n as u32, spi, esp_len: esp_len as u32 };
        Ok(Opened { plaintext_len: n as u32, pad_length: d[n - 2], next_header: d[n - 1] })
    }
}

/// Packet `index` of the lent batch, untouched so far in this call, and the
/// key `key` names with what it may do: the guest names both, so both are
/// checked.
fn check<'a>(
    keys: &'a KeyTable,
    marks: &[Mark],
    index: u32,
    key: u64,
) -> Result<(usize, &'a EspKey, KeyUse), WitCryptoError> {
    let i = index as usize;
    if marks.get(i) != Some(&Mark::Untouched) {
        return Err(WitCryptoError::BadLength);
    }
    let (k, u) = keys.get(key).map_err(wit_error)?;
    Ok((i, k, u))
}

/// Count a refused request and answer it with `e`.
fn refused(refusals: &mut u64, e: WitCryptoError) -> WitCryptoError {
    *refusals += 1;
    e
}

impl b::wasmsec::crypto::types::Host for GuestState {}
impl b::wasmsec::crypto::packets::Host for GuestState {}
impl b::wasmsec::net::types::Host for GuestState {}

impl HostBatch for GuestState {
    fn count(&mut self, _: Resource<Batch>) -> u32 {
        self.count as u32
    }

    fn heads(&mut self, _: Resource<Batch>, head_len: u32) -> Vec<u8> {
        // Capped: the guest chooses head_len, and must not make the host
        // allocate without bound.
        let h = (head_len as usize).min(256);
        Heads::of(h, self.batch[..self.count].iter().map(|p| p.data())).into_flat()
    }

    fn seal(&mut self, _: Resource<Batch>, ops: Vec<SealOp>) -> Vec<Result<(), WitCryptoError>> {
        ops.iter().map(|op| self.seal_one(op)).collect()
    }

    fn open(&mut self, _: Resource<Batch>, ops: Vec<OpenOp>) -> Vec<Result<Opened, WitCryptoError>> {
        ops.iter().map(|op| self.open_one(op)).collect()
    }

    fn drop(&mut self, _: Resource<Batch>) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// The compiled ESP component, linked and ready to instantiate.
pub(crate) struct EspPre(b::EspEnginePre<GuestState>);

impl EspPre {
    pub fn load(engine: &Engine, component: &wasmtime::component::Component) -> Result<EspPre> {
        let pre = sandbox::link(engine, component, "ESP", |l| b::EspEngine::add_to_linker::<_, HasSelf<_>>(l, |s| s))?;
        Ok(EspPre(b::EspEnginePre::new(pre).context("ESP component does not export wasmsec:esp/engine")?))
    }

    pub fn instantiate(&self, engine: &Engine) -> Result<EspInstance> {
        let state = GuestState {
            limits: sandbox::store_limits(),
            keys: KeyTable::default(),
            batch: Vec::new(),
            count: 0,
            marks: Vec::new(),
            refusals: 0,
        };
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
        self.store.set_epoch_deadline(sandbox::ESP_CALL_DEADLINE_TICKS);
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

    /// Encapsulate the first `n` packets in `store.data().batch`.
    pub fn encap(&mut self, n: usize) -> Result<Vec<EncapVerdict>> {
        self.store.data_mut().lend(n);
        let (e, s) = self.e();
        Ok(e.call_encap(s, Resource::new_borrow(0))?)
    }

    /// Decapsulate the first `n` packets in `store.data().batch`.
    pub fn decap(&mut self, n: usize) -> Result<Vec<DecapVerdict>> {
        self.store.data_mut().lend(n);
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
