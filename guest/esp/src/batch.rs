//! The engine's view of packets held by the host.

/// Opaque name of a key in the host keystore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHandle(pub u64);

/// How many bytes of a packet's head the engine reads: an IPv6 header plus
/// the first 8 bytes of the next layer, or an IPv4 header with options.
pub const HEAD_LEN: usize = 64;

/// The length and first bytes of every packet of a batch, laid out as the
/// host's `heads` returns them (`wit/deps/crypto/crypto.wit`): per packet
/// its length as 4 bytes big-endian, then `head_len` bytes, zero-padded.
/// The engine reads them in place: no copy per packet.
pub struct Heads {
    flat: Vec<u8>,
    head_len: usize,
}

impl Heads {
    /// The host's answer to `heads(head_len)`, as is.
    pub fn from_flat(flat: Vec<u8>, head_len: usize) -> Heads {
        Heads { flat, head_len }
    }

    /// The same layout from packets in hand (native callers and tests).
    pub fn of<'a>(head_len: usize, packets: impl ExactSizeIterator<Item = &'a [u8]>) -> Heads {
        let mut flat = vec![0u8; packets.len() * (4 + head_len)];
        for (p, rec) in packets.zip(flat.chunks_exact_mut(4 + head_len)) {
            rec[..4].copy_from_slice(&(p.len() as u32).to_be_bytes());
            let n = p.len().min(head_len);
            rec[4..4 + n].copy_from_slice(&p[..n]);
        }
        Heads { flat, head_len }
    }

    pub fn len(&self) -> usize {
        self.flat.len() / (4 + self.head_len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Packet `i`'s length and its first bytes (at most `head_len`).
    pub fn get(&self, i: usize) -> Option<(usize, &[u8])> {
        let stride = 4 + self.head_len;
        self.flat.get(i * stride..(i + 1) * stride).map(Self::record)
    }

    /// Every packet's length and first bytes, in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.flat.chunks_exact(4 + self.head_len).map(Self::record)
    }

    fn record(rec: &[u8]) -> (usize, &[u8]) {
        let len = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize;
        (len, &rec[4..4 + len.min(rec.len() - 4)])
    }
}

pub use wasmsec_wire::CryptoError;

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
