//! The engine's view of packets held by the host.

/// Opaque name of a key in the host keystore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHandle(pub u64);

/// How many bytes of a packet's head the engine reads: an IPv6 header plus
/// the first 8 bytes of the next layer, or an IPv4 header with options.
pub const HEAD_LEN: usize = 64;

/// The first bytes of a packet, copied out of the host buffer.
#[derive(Clone, Copy)]
pub struct Head {
    bytes: [u8; HEAD_LEN],
    len: usize,
}

impl Head {
    pub fn new(src: &[u8]) -> Head {
        let len = src.len().min(HEAD_LEN);
        let mut bytes = [0u8; HEAD_LEN];
        bytes[..len].copy_from_slice(&src[..len]);
        Head { bytes, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl core::fmt::Debug for Head {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Head({} bytes)", self.len)
    }
}

/// Why the host refused or failed a crypto operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
    UnknownKey,
    WrongKeyKind,
    IntegrityFailed,
    BadLength,
    KeyExpired,
}

/// What the host reports after opening a packet.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// The head of the plaintext (the inner IP header).
    pub head: Head,
    /// Plaintext length, trailer included.
    pub plaintext_len: usize,
    pub pad_length: u8,
    pub next_header: u8,
}

/// A batch of packets in host memory with in-place ESP crypto by key handle.
/// The ESP component implements it on the `wasmsec:crypto/packets` imports;
/// the host's native tests and benches implement it directly.
pub trait PacketBatch {
    fn count(&self) -> u32;
    fn packet_len(&self, index: u32) -> usize;
    /// The first [`HEAD_LEN`] bytes (or fewer) of packet `index`.
    fn head(&self, index: u32) -> Head;
    /// ESP-seal in place: see `seal` in `wit/deps/crypto/crypto.wit`.
    fn seal(
        &mut self,
        index: u32,
        key: KeyHandle,
        header: &[u8; wasmsec_wire::esp::HEADER_LEN],
        esn_high: Option<u32>,
        trailer: &[u8],
    ) -> Result<(), CryptoError>;
    /// ESP-open in place: see `open` in `wit/deps/crypto/crypto.wit`.
    fn open(&mut self, index: u32, key: KeyHandle, esn_high: Option<u32>) -> Result<Opened, CryptoError>;
}
