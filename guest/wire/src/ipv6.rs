//! IPv6 fixed header (RFC 8200 section 3), as far as the ESP engine needs it.
use crate::{Error, Result, be16};

pub const HEADER_LEN: usize = 40;

packet_view! {
    HEADER_LEN,
    /// A read-only view of an IPv6 packet's fixed header.
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A whole fixed header of version 6.
    #[inline(always)]
    fn check_fields(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b[0] >> 4 != 6 {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    #[inline(always)]
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    /// The first Next Header value (extension headers are not walked).
    #[inline(always)]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }

    #[inline(always)]
    pub fn src_addr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[8..24]);
        a
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[24..40]);
        a
    }

    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_truncation() {
        let mut b = [0u8; 48];
        b[0] = 0x60;
        b[4..6].copy_from_slice(&8u16.to_be_bytes());
        b[6] = 17;
        b[8] = 0x20;
        b[39] = 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.src_addr()[0], 0x20);
        assert_eq!(p.dst_addr()[15], 1);
        assert_eq!(p.payload().len(), 8);
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&b[..n]).err(), Some(Error::Truncated));
        }
        b[0] = 0x40;
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
    }
}
