//! The fixed IKE header (RFC 7296 section 3.1).
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Initiator's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Responder's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          Message ID                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                            Length                             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
use alloc::vec::Vec;

use super::registry::{ExchangeType, PayloadType};
use crate::{Error, Result, be32};

pub const HEADER_LEN: usize = 28;
/// IKE major version 2, minor 0.
pub const VERSION: u8 = 0x20;

pub const FLAG_INITIATOR: u8 = 0x08;
pub const FLAG_VERSION: u8 = 0x10;
pub const FLAG_RESPONSE: u8 = 0x20;

packet_view! {
    HEADER_LEN,
    /// A read-only view of an IKE message's header.
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A whole header whose Length field is at least the header and at most
    /// the datagram.
    fn check_fields(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        let len = be32(b, 24) as usize;
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len > b.len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn spi_i(&self) -> u64 {
        u64::from(be32(self.buffer.as_ref(), 0)) << 32 | u64::from(be32(self.buffer.as_ref(), 4))
    }

    pub fn spi_r(&self) -> u64 {
        u64::from(be32(self.buffer.as_ref(), 8)) << 32 | u64::from(be32(self.buffer.as_ref(), 12))
    }

    pub fn next_payload(&self) -> PayloadType {
        self.buffer.as_ref()[16].into()
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[17]
    }

    pub fn exchange(&self) -> ExchangeType {
        self.buffer.as_ref()[18].into()
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[19]
    }

    pub fn message_id(&self) -> u32 {
        be32(self.buffer.as_ref(), 20)
    }

    pub fn length(&self) -> u32 {
        be32(self.buffer.as_ref(), 24)
    }

    /// The payload chain after the header, up to the Length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.length() as usize]
    }
}

/// The header as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The IKE SA initiator's SPI.
    pub spi_i: u64,
    /// The IKE SA responder's SPI (0 in an IKE_SA_INIT request).
    pub spi_r: u64,
    /// Type of the first payload.
    pub next_payload: PayloadType,
    /// Major version in the high nibble, minor in the low (`VERSION`).
    pub version: u8,
    /// The exchange type.
    pub exchange: ExchangeType,
    /// The `FLAG_*` bits: Initiator, Version, Response.
    pub flags: u8,
    /// The Message ID (section 2.2).
    pub message_id: u32,
    /// Length of the whole message in bytes, header included.
    pub length: u32,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        Ok(Repr {
            spi_i: p.spi_i(),
            spi_r: p.spi_r(),
            next_payload: p.next_payload(),
            version: p.version(),
            exchange: p.exchange(),
            flags: p.flags(),
            message_id: p.message_id(),
            length: p.length(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Append the header's 28 bytes.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.spi_i.to_be_bytes());
        b[8..16].copy_from_slice(&self.spi_r.to_be_bytes());
        b[16..20].copy_from_slice(&[self.next_payload.raw(), self.version, self.exchange.raw(), self.flags]);
        b[20..24].copy_from_slice(&self.message_id.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Sent by the original initiator of the IKE SA (section 3.1).
    pub fn is_initiator(&self) -> bool {
        self.flags & FLAG_INITIATOR != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let h = Repr {
            spi_i: 0x0102_0304_0506_0708,
            spi_r: 0x1112_1314_1516_1718,
            next_payload: PayloadType::Sa,
            version: VERSION,
            exchange: ExchangeType::IkeSaInit,
            flags: FLAG_INITIATOR,
            message_id: 7,
            length: HEADER_LEN as u32,
        };
        let b = h.to_bytes();
        assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), h);
        assert_eq!(Packet::new_checked(&b[..27]).unwrap_err(), Error::Truncated);
        let mut short = b;
        short[27] = 27;
        assert_eq!(Packet::new_checked(&short[..]).unwrap_err(), Error::Malformed);
        let mut long = b;
        long[27] = 29;
        assert_eq!(Packet::new_checked(&long[..]).unwrap_err(), Error::Truncated);
    }
}
