//! What arrives on UDP port 4500 (RFC 3948 section 2): a NAT keepalive, an
//! IKE message behind the 4-byte non-ESP marker, or an ESP packet.
use crate::{Error, Result};

/// The non-ESP marker that precedes IKE messages on port 4500.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// The one-byte NAT keepalive (RFC 3948 section 2.3).
pub const KEEPALIVE: [u8; 1] = [0xff];

/// The kind of a UDP-encapsulated datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// A NAT keepalive; to be ignored by the receiver.
    Keepalive,
    /// An IKE message, marker removed.
    Ike(&'a [u8]),
    /// An ESP packet, starting at the SPI.
    Esp(&'a [u8]),
}

impl<'a> Datagram<'a> {
    /// Classify a UDP payload received on port 4500.
    pub fn classify(payload: &'a [u8]) -> Result<Datagram<'a>> {
        match payload {
            [0xff] => Ok(Datagram::Keepalive),
            [0, 0, 0, 0, ike @ ..] => Ok(Datagram::Ike(ike)),
            // Shorter than an ESP header cannot be ESP (RFC 3948 section 2.2).
            p if p.len() < crate::esp::HEADER_LEN => Err(Error::Truncated),
            p => Ok(Datagram::Esp(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_all_kinds() {
        assert_eq!(Datagram::classify(&[0xff]), Ok(Datagram::Keepalive));
        assert_eq!(Datagram::classify(&[0, 0, 0, 0, 1, 2]), Ok(Datagram::Ike(&[1, 2])));
        let esp = [0, 0, 0, 1, 0, 0, 0, 1, 9];
        assert_eq!(Datagram::classify(&esp), Ok(Datagram::Esp(&esp)));
        assert_eq!(Datagram::classify(&[1, 2, 3]), Err(Error::Truncated));
        assert_eq!(Datagram::classify(&[]), Err(Error::Truncated));
    }
}
