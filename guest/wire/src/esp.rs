//! ESP header and trailer (RFC 4303 sections 2.1-2.6).
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               Security Parameters Index (SPI)                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      Sequence Number                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      IV, Payload Data, Padding, Pad Length, Next Header ...   |
//! |                 Integrity Check Value (ICV)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
use crate::{Error, Result, be32};

/// The inbound SPIs the IKE engine picks for its CHILD SAs all have
/// these two high bits set (0xc0000000-0xffffffff): recognisably ours in a
/// capture, and a range a manually keyed tunnel's `in_spi` keeps out of
/// where both run in one daemon, since an SPI names one inbound SA (RFC
/// 4301 section 4.1) and the IKE engine does not know the manual ones.
pub const IKE_SPI_BITS: u32 = 0xc000_0000;
/// Length of the SPI and Sequence Number fields.
pub const HEADER_LEN: usize = 8;
/// Pad Length and Next Header (RFC 4303 section 2.4-2.6).
pub const TRAILER_FIXED_LEN: usize = 2;
/// Next Header value of a dummy packet (RFC 4303 section 2.6).
pub const NEXT_HEADER_NO_NEXT: u8 = 59;
/// Next Header for an IPv4 inner packet (tunnel mode).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// Next Header for an IPv6 inner packet (tunnel mode).
pub const NEXT_HEADER_IPV6: u8 = 41;
/// The longest trailer: 255 bytes of padding, Pad Length, Next Header.
pub const MAX_TRAILER_LEN: usize = 255 + TRAILER_FIXED_LEN;
/// The default padding, 1, 2, 3, ... (RFC 4303 section 2.4): a trailer
/// with Pad Length n starts with the first n of these.
pub const DEFAULT_PADDING: [u8; 255] = {
    let mut p = [0u8; 255];
    let mut i = 0;
    while i < 255 {
        p[i] = i as u8 + 1;
        i += 1;
    }
    p
};

packet_view! {
    HEADER_LEN,
    /// A read-only view of an ESP packet (header and the protected rest).
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A whole header and a non-zero SPI (SPI 0 is reserved, RFC 4303
    /// section 2.1; on UDP port 4500 it is the non-ESP marker of RFC 3948).
    fn check_fields(&self) -> Result<()> {
        if self.spi() == 0 {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    pub fn spi(&self) -> u32 {
        be32(self.buffer.as_ref(), 0)
    }

    /// The low 32 bits of the sequence number as sent.
    pub fn sequence_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }

    /// Everything after the header: IV, ciphertext, ICV.
    pub fn protected(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// The ESP header as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The receiver's SPI, which names the SA (RFC 4303 section 2.1).
    pub spi: u32,
    /// Low 32 bits of the sequence number (the high bits of an ESN are never
    /// sent, RFC 4303 section 2.2.1).
    pub sequence_number: u32,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr { spi: packet.spi(), sequence_number: packet.sequence_number() })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the header into the first 8 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        buf[0..4].copy_from_slice(&self.spi.to_be_bytes());
        buf[4..8].copy_from_slice(&self.sequence_number.to_be_bytes());
        Ok(())
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.spi.to_be_bytes());
        b[4..8].copy_from_slice(&self.sequence_number.to_be_bytes());
        b
    }
}

/// The ESP trailer: padding, Pad Length and Next Header (RFC 4303 sections
/// 2.4-2.6). Built for sending with [`Trailer::for_payload`]; checked on
/// receipt with [`Trailer::check`].
#[derive(Clone, Copy)]
pub struct Trailer {
    bytes: [u8; MAX_TRAILER_LEN],
    /// Up to 257 (255 bytes of padding, Pad Length, Next Header).
    len: u16,
}

impl core::fmt::Debug for Trailer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Trailer").field("bytes", &self.as_bytes()).finish()
    }
}

impl Trailer {
    /// The trailer for a payload of `payload_len` bytes, padded so that
    /// payload + trailer is a multiple of `align` (the cipher block size, at
    /// least 4 so that the ICV is 4-byte aligned, RFC 4303 section 2.4).
    /// The padding is the default 1, 2, 3, ... sequence.
    pub fn for_payload(payload_len: usize, align: u8, next_header: u8) -> Trailer {
        Trailer::new(Trailer::pad_length_for(payload_len, align), next_header)
    }

    /// The trailer with `pad_length` bytes of the default padding 1, 2, 3,
    /// ... (RFC 4303 section 2.4), Pad Length and Next Header.
    pub fn new(pad_length: u8, next_header: u8) -> Trailer {
        let pad_len = usize::from(pad_length);
        let mut bytes = [0u8; MAX_TRAILER_LEN];
        bytes[..pad_len].copy_from_slice(&DEFAULT_PADDING[..pad_len]);
        bytes[pad_len] = pad_length;
        bytes[pad_len + 1] = next_header;
        Trailer { bytes, len: (pad_len + TRAILER_FIXED_LEN) as u16 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Only the Pad Length [`Trailer::for_payload`] would choose (the data
    /// path lets the host write the padding itself).
    pub fn pad_length_for(payload_len: usize, align: u8) -> u8 {
        let align = usize::from(align.max(4));
        let used = payload_len + TRAILER_FIXED_LEN;
        // Block sizes are powers of two (the engine refuses others): a mask,
        // not the two divisions, on the per-packet path.
        if align.is_power_of_two() {
            return (used.wrapping_neg() & (align - 1)) as u8;
        }
        ((align - used % align) % align) as u8
    }

    pub fn pad_length(&self) -> u8 {
        self.bytes[usize::from(self.len) - TRAILER_FIXED_LEN]
    }

    pub fn next_header(&self) -> u8 {
        self.bytes[usize::from(self.len) - 1]
    }

    /// Check a received trailer's Pad Length against the plaintext length;
    /// returns the payload length (plaintext without padding and trailer).
    pub fn check(plaintext_len: usize, pad_length: u8) -> Result<usize> {
        plaintext_len.checked_sub(usize::from(pad_length) + TRAILER_FIXED_LEN).ok_or(Error::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let repr = Repr { spi: 0xc0ffee01, sequence_number: 0x0102_0304 };
        let mut buf = [0u8; 12];
        repr.emit(&mut buf).unwrap();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), repr);
        assert_eq!(p.protected().len(), 4);
        assert_eq!(repr.to_bytes(), buf[..8]);
    }

    #[test]
    fn truncated_and_zero_spi_are_rejected() {
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&[1u8; 8][..n]).err(), Some(Error::Truncated));
        }
        assert_eq!(Packet::new_checked(&[0u8; 16][..]).err(), Some(Error::Malformed));
        assert!(Repr { spi: 1, sequence_number: 1 }.emit(&mut [0u8; 7]).is_err());
    }

    #[test]
    fn trailer_pads_to_alignment_with_default_sequence() {
        for align in [4u8, 8, 12, 16] {
            for len in 0..64usize {
                let t = Trailer::for_payload(len, align, NEXT_HEADER_IPV4);
                assert_eq!((len + t.as_bytes().len()) % usize::from(align), 0);
                let pad = usize::from(t.pad_length());
                assert!(pad < usize::from(align));
                assert_eq!(&t.as_bytes()[..pad], &[1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15][..pad]);
                assert_eq!(t.next_header(), NEXT_HEADER_IPV4);
                assert_eq!(Trailer::check(len + t.as_bytes().len(), t.pad_length()), Ok(len));
                assert_eq!(Trailer::pad_length_for(len, align), t.pad_length());
            }
        }
    }

    #[test]
    fn the_longest_trailer_keeps_its_length() {
        let t = Trailer::new(255, NEXT_HEADER_IPV6);
        assert_eq!(t.as_bytes().len(), MAX_TRAILER_LEN);
        assert_eq!((t.pad_length(), t.next_header()), (255, NEXT_HEADER_IPV6));
        assert_eq!(t.as_bytes()[254], 255);
    }

    #[test]
    fn trailer_check_rejects_pad_longer_than_plaintext() {
        assert_eq!(Trailer::check(2, 0), Ok(0));
        assert_eq!(Trailer::check(2, 1), Err(Error::Malformed));
        assert_eq!(Trailer::check(0, 0), Err(Error::Malformed));
        assert_eq!(Trailer::check(10, 255), Err(Error::Malformed));
    }
}
