//! Packet buffers with head- and tailroom, so ESP framing is added and
//! removed in place, without copying the payload.

/// Room kept in front of a received packet for the ESP header and IV.
pub const HEADROOM: usize = 64;
/// Largest packet read from the TUN device or a socket.
pub const MAX_PACKET: usize = 16384;
/// Room behind a packet for the ESP trailer (up to 257 bytes) and the ICV.
pub const TAILROOM: usize = 320;
const CAPACITY: usize = HEADROOM + MAX_PACKET + TAILROOM;

/// One packet: `buf[start..end]` is the data.
#[derive(Clone)]
pub struct PacketBuf {
    /// Headroom, up to `MAX_PACKET` bytes of packet, and tailroom.
    buf: Box<[u8]>,
    /// Where the data begins in `buf`.
    start: usize,
    /// Where the data ends in `buf` (exclusive).
    end: usize,
}

impl Default for PacketBuf {
    fn default() -> Self {
        PacketBuf::new()
    }
}

impl PacketBuf {
    pub fn new() -> PacketBuf {
        PacketBuf { buf: vec![0u8; CAPACITY].into_boxed_slice(), start: HEADROOM, end: HEADROOM }
    }

    pub fn with_payload(data: &[u8]) -> PacketBuf {
        let mut p = PacketBuf::new();
        p.recv_area()[..data.len()].copy_from_slice(data);
        p.set_received(data.len());
        p
    }

    /// The area a read() should fill: after the headroom, up to MAX_PACKET.
    pub fn recv_area(&mut self) -> &mut [u8] {
        &mut self.buf[HEADROOM..HEADROOM + MAX_PACKET]
    }

    /// After a read of `n` bytes into `recv_area`.
    pub fn set_received(&mut self, n: usize) {
        self.start = HEADROOM;
        self.end = HEADROOM + n.min(MAX_PACKET);
    }

    /// The data after a read with `skip` bytes of lower headers in front
    /// (a raw IP socket returns the IP header).
    pub fn set_received_skip(&mut self, n: usize, skip: usize) {
        self.set_received(n);
        self.start = (HEADROOM + skip).min(self.end);
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn headroom(&self) -> usize {
        self.start
    }

    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.end
    }

    /// Put `b` in front; callers check `headroom()`.
    pub fn prepend(&mut self, b: &[u8]) {
        self.start -= b.len();
        self.buf[self.start..self.start + b.len()].copy_from_slice(b);
    }

    /// Put `b` behind; callers check `tailroom()`.
    pub fn append(&mut self, b: &[u8]) {
        self.buf[self.end..self.end + b.len()].copy_from_slice(b);
        self.end += b.len();
    }

    /// Drop `n` bytes from the front (at most all).
    pub fn advance(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Keep only the first `n` bytes (no-op if already shorter).
    pub fn truncate(&mut self, n: usize) {
        self.end = self.start + n.min(self.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_in_place() {
        let mut p = PacketBuf::with_payload(b"payload");
        p.prepend(b"hd");
        p.append(b"tl");
        assert_eq!(p.data(), b"hdpayloadtl");
        p.advance(2);
        p.truncate(7);
        assert_eq!(p.data(), b"payload");
        p.advance(100);
        assert!(p.is_empty());
        p.set_received_skip(10, 20);
        assert!(p.is_empty());
    }
}
