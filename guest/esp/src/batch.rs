//! The engine's view of packets held by the host.

/// Opaque name of a key in the host keystore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHandle(pub u64);

/// How many bytes of a packet's head the engine reads: an IPv6 header plus
/// the first 8 bytes of the next layer, or an IPv4 header with options.
pub const HEAD_LEN: usize = 64;

pub use wasmsec_wire::CryptoError;
pub use wasmsec_wire::heads::Heads;

/// Seal packet `index`: see `seal-op` in `wit/deps/crypto/crypto.wit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealOp {
    /// The packet's position in the batch.
    pub index: u32,
    /// The host's key to seal with.
    pub key: KeyHandle,
    /// SPI for the ESP header: the peer's, from the outbound SA.
    pub spi: u32,
    /// Low 32 bits of the sequence number, written in the ESP header.
    pub seq_low: u32,
    /// High 32 bits of the sequence number, authenticated only (ESN); None without ESN.
    pub esn_high: Option<u32>,
    /// Padding bytes in the trailer the host appends (RFC 4303 section 2.4).
    pub pad_length: u8,
    /// Next Header for the trailer: 4 for an inner IPv4 packet, 41 for IPv6.
    pub next_header: u8,
}

/// Open packet `index`: see `open-op` in `wit/deps/crypto/crypto.wit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOp {
    /// The packet's position in the batch.
    pub index: u32,
    /// The host's key to open with.
    pub key: KeyHandle,
    /// High 32 bits of the inferred sequence number (ESN); None without ESN.
    pub esn_high: Option<u32>,
}

/// What the host reports after opening a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Plaintext length, trailer included.
    pub plaintext_len: usize,
    /// The trailer's Pad Length field (RFC 4303 section 2.5).
    pub pad_length: u8,
    /// The trailer's Next Header field (RFC 4303 section 2.6).
    pub next_header: u8,
}

/// A batch of packets in host memory with in-place ESP crypto by key
/// handle, one call per batch. The ESP component implements it on the
/// `wasmsec:crypto/packets` imports; native tests and benches directly.
pub trait PacketBatch {
    fn count(&self) -> u32;
    /// Length and first `head_len` bytes (at most [`HEAD_LEN`]) of every
    /// packet, in order.
    fn heads(&self, head_len: usize) -> Heads;
    /// Seal the packets named by `ops`; one result per op, in order.
    fn seal(&mut self, ops: &[SealOp], out: &mut Vec<Result<(), CryptoError>>);
    /// Open the packets named by `ops`; one result per op, in order.
    fn open(&mut self, ops: &[OpenOp], out: &mut Vec<Result<Opened, CryptoError>>);
}
