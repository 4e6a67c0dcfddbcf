//! The engine's view of packets held by the host.

/// Opaque name of a key in the host keystore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHandle(pub u64);

pub use wasmsec_wire::CryptoError;
/// How many bytes of an IP packet's head the engine reads.
pub use wasmsec_wire::heads::IP_HEAD_LEN;
pub use wasmsec_wire::heads::{ESP_HEAD_LEN, Heads};

/// Seal a run of packets of one outbound SA with consecutive sequence
/// numbers: see `seal-run` in `wit/deps/crypto/crypto.wit`. The engine
/// builds runs as it plans, so the component shell passes them on as they
/// are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealRun {
    /// The host's key to seal with.
    pub key: KeyHandle,
    /// SPI for the ESP headers: the peer's, from the outbound SA.
    pub spi: u32,
    /// The first packet's full sequence number; each next one is one more.
    /// The header carries the low 32 bits, the ICV covers the high ones
    /// with ESN (RFC 4303 section 2.2.1).
    pub first_seq: u64,
    /// Extended sequence numbers.
    pub esn: bool,
    /// The packets' positions in the batch, in sequence-number order.
    pub packets: Vec<u32>,
    /// Per packet: padding bytes in the trailer (RFC 4303 section 2.4).
    pub pad_lengths: Vec<u8>,
    /// Per packet: the trailer's Next Header, 4 for IPv4, 41 for IPv6.
    pub next_headers: Vec<u8>,
}

impl SealRun {
    /// The full sequence number of the run's `k`th packet.
    pub fn seq(&self, k: usize) -> u64 {
        self.first_seq.wrapping_add(k as u64)
    }

    /// The ESN high half the `k`th packet's ICV covers; None without ESN.
    pub fn esn_high(&self, k: usize) -> Option<u32> {
        self.esn.then(|| (self.seq(k) >> 32) as u32)
    }
}

/// Open a run of packets under one key: see `open-run` in
/// `wit/deps/crypto/crypto.wit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRun {
    /// The host's key to open with.
    pub key: KeyHandle,
    /// The packets' positions in the batch.
    pub packets: Vec<u32>,
    /// With ESN, per packet: the high 32 bits of its inferred sequence
    /// number (RFC 4303 appendix A); empty without.
    pub esn_highs: Vec<u32>,
}

impl OpenRun {
    /// The ESN high half of the run's `k`th packet; None without ESN.
    pub fn esn_high(&self, k: usize) -> Option<u32> {
        self.esn_highs.get(k).copied()
    }
}

/// A packet of a run the host did not seal or open, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpFailure {
    /// The packet's position in the batch.
    pub packet: u32,
    pub error: CryptoError,
}

/// What the host says about the packets of the open runs: one entry per
/// packet, runs one after the other (0 for the packets in `failures`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// The trailer's Pad Length field (RFC 4303 section 2.5).
    pub pad_lengths: Vec<u8>,
    /// The trailer's Next Header field (RFC 4303 section 2.6).
    pub next_headers: Vec<u8>,
    /// The packets that did not open, in order.
    pub failures: Vec<OpFailure>,
    /// The heads ([`IP_HEAD_LEN`]) of all the batch's packets after the open.
    pub heads: Heads,
}

/// A batch of packets in host memory with in-place ESP crypto by key
/// handle, one call per batch. The ESP component implements it on the
/// `wasmsec:crypto/packets` imports; native tests and benches directly.
/// The packets' heads come with the batch, as arguments of the engine's
/// `encap` and `decap`.
pub trait PacketBatch {
    /// Seal the runs' packets; the packets that were not sealed, in order.
    fn seal(&mut self, runs: Vec<SealRun>) -> Vec<OpFailure>;
    /// Open the runs' packets.
    fn open(&mut self, runs: Vec<OpenRun>) -> Opened;
}
