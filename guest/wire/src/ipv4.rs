//! IPv4 header (RFC 791), as far as the ESP engine needs it: addresses,
//! protocol, lengths and the header checksum.
use crate::{Error, Result, be16};

pub const HEADER_LEN: usize = 20;

packet_view! {
    HEADER_LEN,
    /// A read-only view of an IPv4 packet.
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Version 4, a header length of at least 20 bytes that fits the
    /// buffer, and a total length no shorter than the header. The buffer may
    /// be a prefix of the packet (the engine reads only the head), so the
    /// total length may exceed it.
    #[inline(always)]
    fn check_fields(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN || usize::from(self.total_len()) < hl {
            return Err(Error::Malformed);
        }
        if b.len() < hl {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x0f) * 4
    }

    /// The second byte: DSCP and ECN.
    #[inline(always)]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// True for every fragment but the first (their ports are not present).
    #[inline(always)]
    pub fn is_non_first_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), 6) & 0x1fff != 0
    }

    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[9]
    }

    #[inline(always)]
    pub fn src_addr(&self) -> [u8; 4] {
        let b = self.buffer.as_ref();
        [b[12], b[13], b[14], b[15]]
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> [u8; 4] {
        let b = self.buffer.as_ref();
        [b[16], b[17], b[18], b[19]]
    }

    /// The bytes after the header that are in the buffer.
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Verify the header checksum.
    pub fn verify_checksum(&self) -> bool {
        checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }
}

/// The fields of a simple (option-less) IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address, in network byte order.
    pub src_addr: [u8; 4],
    /// Destination address, in network byte order.
    pub dst_addr: [u8; 4],
    /// The payload's IP protocol (e.g. 17 for UDP, 50 for ESP).
    pub protocol: u8,
    /// Bytes after the header: Total Length minus the header length.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// The second byte: DSCP (upper six bits) and ECN (lower two).
    pub dscp_ecn: u8,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.buffer.as_ref()[8],
            dscp_ecn: packet.dscp_ecn(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write an option-less header with a valid checksum.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let total = HEADER_LEN + self.payload_len;
        if buf.len() < HEADER_LEN || total > usize::from(u16::MAX) {
            return Err(Error::Truncated);
        }
        let h = &mut buf[..HEADER_LEN];
        h.fill(0);
        h[0] = 0x45;
        h[1] = self.dscp_ecn;
        h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        h[6] = 0x40; // don't fragment
        h[8] = self.ttl;
        h[9] = self.protocol;
        h[12..16].copy_from_slice(&self.src_addr);
        h[16..20].copy_from_slice(&self.dst_addr);
        let c = checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        Ok(())
    }
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Repr {
        Repr {
            src_addr: [198, 18, 1, 10],
            dst_addr: [198, 18, 2, 10],
            protocol: 1,
            payload_len: 8,
            ttl: 64,
            dscp_ecn: 0xb9,
        }
    }

    #[test]
    fn round_trip_with_checksum() {
        let mut buf = [0u8; 28];
        sample().emit(&mut buf).unwrap();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p).unwrap(), sample());
        let mut again = [0u8; 28];
        Repr::parse(&p).unwrap().emit(&mut again).unwrap();
        assert_eq!(buf, again);
    }

    #[test]
    fn truncated_and_bad_fields_are_rejected() {
        let mut buf = [0u8; 28];
        sample().emit(&mut buf).unwrap();
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&buf[..n]).err(), Some(Error::Truncated));
        }
        let mut v6 = buf;
        v6[0] = 0x65;
        assert_eq!(Packet::new_checked(&v6[..]).err(), Some(Error::Malformed));
        let mut short_ihl = buf;
        short_ihl[0] = 0x44;
        assert_eq!(Packet::new_checked(&short_ihl[..]).err(), Some(Error::Malformed));
        let mut long_ihl = buf;
        long_ihl[0] = 0x4f; // 60-byte header in a 28-byte buffer
        long_ihl[2..4].copy_from_slice(&60u16.to_be_bytes());
        assert_eq!(Packet::new_checked(&long_ihl[..]).err(), Some(Error::Truncated));
        let mut bad_total = buf;
        bad_total[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(Packet::new_checked(&bad_total[..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3: the one's complement sum of these words is 0xddf2.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }
}
