//! The first bytes of every packet of a batch, in the one layout the host
//! lends the ESP engine with a batch and answers `open` with
//! (`wit/deps/crypto/crypto.wit`), and the engine reads in place: per
//! packet its length as 4 bytes big-endian, then `head_len` bytes,
//! zero-padded. The host builds it with [`Heads::of`] and the guest wraps
//! what it got with [`Heads::from_flat`], so the layout is written once.
//! (Not a wire format; it lives here because the host and every guest
//! crate depend on this crate.)

use alloc::vec;
use alloc::vec::Vec;

/// How much of an IP packet the heads carry: an IPv6 header and the 24
/// bytes after it, or an IPv4 header with options and the ports after it.
pub const IP_HEAD_LEN: usize = 64;

/// How much of an ESP packet the heads carry: SPI and sequence number.
pub const ESP_HEAD_LEN: usize = crate::esp::HEADER_LEN;

/// Heads of a batch's packets; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heads {
    flat: Vec<u8>,
    head_len: usize,
}

impl Heads {
    /// Heads the host handed over, as they are.
    pub fn from_flat(flat: Vec<u8>, head_len: usize) -> Heads {
        Heads { flat, head_len }
    }

    /// The layout built from packets in hand (the host, native callers and
    /// tests).
    pub fn of<'a>(head_len: usize, packets: impl ExactSizeIterator<Item = &'a [u8]>) -> Heads {
        let mut flat = vec![0u8; packets.len() * (4 + head_len)];
        for (p, rec) in packets.zip(flat.chunks_exact_mut(4 + head_len)) {
            rec[..4].copy_from_slice(&(p.len() as u32).to_be_bytes());
            let n = p.len().min(head_len);
            rec[4..4 + n].copy_from_slice(&p[..n]);
        }
        Heads { flat, head_len }
    }

    /// The flat bytes, as the host hands them to the guest.
    pub fn into_flat(self) -> Vec<u8> {
        self.flat
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

#[cfg(test)]
mod tests {
    use super::Heads;

    #[test]
    fn short_packets_are_padded_and_keep_their_length() {
        let a = [1u8, 2, 3];
        let b = [9u8; 10];
        let h = Heads::of(4, [&a[..], &b[..]].into_iter());
        assert_eq!(h.len(), 2);
        assert_eq!(h.get(0), Some((3, &a[..])));
        assert_eq!(h.get(1), Some((10, &b[..4])));
        assert_eq!(h.get(2), None);
        let again = Heads::from_flat(h.into_flat(), 4);
        assert_eq!(again.iter().map(|(n, _)| n).collect::<alloc::vec::Vec<_>>(), [3, 10]);
    }
}
