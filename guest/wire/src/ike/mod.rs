//! IKEv2 messages (RFC 7296 section 3): the header ([`header`], a
//! `Packet<T>` view and its `Repr`), the payload chain ([`payload`]), the
//! SA payload's proposals ([`sa`]), traffic selectors ([`ts`]) and IANA's
//! registries as open enums ([`registry`]).
use alloc::vec::Vec;

pub mod header;
pub mod payload;
pub mod registry;
pub mod sa;
pub mod ts;

pub use header::{FLAG_INITIATOR, FLAG_RESPONSE, FLAG_VERSION, HEADER_LEN, Packet, Repr as Header, VERSION};
pub use payload::{Delete, GENERIC_HEADER_LEN, Identification, Notify, Payload, emit_chain, parse_chain};
pub use registry::{
    AuthMethod, DhGroup, EncrId, EsnId, ExchangeType, IdType, IntegId, NotifyType, PayloadType, PrfId, ProtocolId,
    TransformType, TsType,
};
pub use sa::{Proposal, Transform};
pub use ts::TrafficSelector;

use crate::{Error, Result};

/// A whole message: header and payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The fixed header; `emit` fills in Next Payload and Length.
    pub header: Header,
    /// The payloads, in order.
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Parse a datagram. The header's Length must be the datagram's.
    pub fn parse(b: &[u8]) -> Result<Message> {
        let p = Packet::new_checked(b)?;
        let header = Header::parse(&p)?;
        if header.length as usize != b.len() {
            return Err(Error::Malformed);
        }
        let payloads = parse_chain(header.next_payload, p.payload())?;
        Ok(Message { header, payloads })
    }

    pub fn buffer_len(&self) -> usize {
        self.emit().len()
    }

    /// Emit with the header's Next Payload and Length filled in.
    pub fn emit(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let first = emit_chain(&self.payloads, &mut body);
        let mut h = self.header;
        h.next_payload = first;
        h.length = (HEADER_LEN + body.len()) as u32;
        let mut out = Vec::with_capacity(h.length as usize);
        h.emit(&mut out);
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn a_delete_of_zero_sized_spis_is_refused() {
        // Protocol IKE, SPI Size 0, Num of SPIs 65,535, no SPI bytes.
        let body = [1u8, 0, 0xff, 0xff];
        let mut chain = vec![0u8, 0, 0, 8];
        chain.extend_from_slice(&body);
        assert_eq!(parse_chain(PayloadType::Delete, &chain).unwrap_err(), Error::Malformed);
        // The well-formed IKE SA Delete still parses, with no SPIs.
        chain[6..8].copy_from_slice(&[0, 0]);
        match parse_chain(PayloadType::Delete, &chain).unwrap().as_slice() {
            [Payload::Delete(d)] => assert!(d.spis.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    fn sample() -> Message {
        Message {
            header: Header {
                spi_i: 0x0102_0304_0506_0708,
                spi_r: 0,
                next_payload: PayloadType::None,
                version: VERSION,
                exchange: ExchangeType::IkeSaInit,
                flags: FLAG_INITIATOR,
                message_id: 0,
                length: 0,
            },
            payloads: vec![
                Payload::Sa(vec![
                    Proposal {
                        num: 1,
                        protocol: ProtocolId::Ike,
                        spi: vec![],
                        transforms: vec![
                            Transform { kind: TransformType::Encr, id: EncrId::AesGcm16.raw(), key_len: Some(256) },
                            Transform { kind: TransformType::Prf, id: PrfId::HmacSha2_256.raw(), key_len: None },
                            Transform { kind: TransformType::Dh, id: DhGroup::X25519.raw(), key_len: None },
                        ],
                    },
                    Proposal {
                        num: 2,
                        protocol: ProtocolId::Ike,
                        spi: vec![],
                        transforms: vec![Transform {
                            kind: TransformType::Dh,
                            id: DhGroup::Modp2048.raw(),
                            key_len: None,
                        }],
                    },
                ]),
                Payload::Ke { group: DhGroup::X25519.raw(), data: vec![9; 32] },
                Payload::Nonce(vec![7; 32]),
                Payload::notify(NotifyType::NatDetectionSourceIp, vec![1; 20]),
                Payload::IdI(Identification { id_type: IdType::Fqdn, data: b"gwa.interop.test".to_vec() }),
                Payload::Auth { method: AuthMethod::SharedKeyMic, data: vec![3; 32] },
                Payload::TsI(vec![TrafficSelector {
                    ts_type: TsType::Ipv4AddrRange,
                    ip_protocol: 0,
                    start_port: 0,
                    end_port: 65535,
                    start: vec![198, 18, 1, 0],
                    end: vec![198, 18, 1, 255],
                }]),
                Payload::Delete(Delete {
                    protocol: ProtocolId::Esp,
                    spi_size: 4,
                    spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
                }),
                Payload::Unknown { kind: PayloadType::Unknown(200), critical: true, body: vec![1, 2] },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = m.emit();
        let parsed = Message::parse(&bytes).unwrap();
        assert_eq!(parsed.payloads, m.payloads);
        assert_eq!(parsed.header.length as usize, bytes.len());
        assert_eq!(parsed.emit(), bytes);
        assert_eq!(m.buffer_len(), bytes.len());
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = sample().emit();
        for n in 0..bytes.len() {
            assert!(Message::parse(&bytes[..n]).is_err(), "prefix {n}");
        }
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                if let Ok(m) = Message::parse(&b) {
                    // Whatever parses emits to bytes that parse to the same
                    // message (reserved bits are not kept).
                    let again = Message::parse(&m.emit()).unwrap();
                    assert_eq!(again.payloads, m.payloads, "byte {i} = {v}");
                }
            }
        }
    }

    #[test]
    fn sk_payload_ends_the_chain() {
        let m = Message {
            header: sample().header,
            payloads: vec![Payload::Sk { first: PayloadType::IdI, body: vec![0xaa; 40] }],
        };
        let b = m.emit();
        assert_eq!(Message::parse(&b).unwrap().payloads, m.payloads);
        let mut extra = b.clone();
        extra.extend_from_slice(&[0; 4]);
        let n = extra.len() as u32;
        extra[24..28].copy_from_slice(&n.to_be_bytes());
        assert!(Message::parse(&extra).is_err());
    }
}
