//! IKEv2 messages (RFC 7296 section 3): the header, the generic payload
//! chain and the payloads the IKEv2 core uses, as owned values.
//!
//! Parsing walks the chain checking every length before reading, so no
//! input panics; unknown payloads are kept (and flagged if critical,
//! section 2.5); IANA numbers are open enums with their raw value.
use alloc::vec::Vec;

use crate::{Error, Result, be16, be32};

pub const HEADER_LEN: usize = 28;
pub const GENERIC_HEADER_LEN: usize = 4;
/// IKE major version 2, minor 0.
pub const VERSION: u8 = 0x20;

pub const FLAG_INITIATOR: u8 = 0x08;
pub const FLAG_VERSION: u8 = 0x10;
pub const FLAG_RESPONSE: u8 = 0x20;

/// Exchange types (IANA "IKEv2 Exchange Types").
pub mod exchange {
    pub const IKE_SA_INIT: u8 = 34;
    pub const IKE_AUTH: u8 = 35;
    pub const CREATE_CHILD_SA: u8 = 36;
    pub const INFORMATIONAL: u8 = 37;
}

/// Payload types (IANA "IKEv2 Payload Types").
pub mod payload {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    pub const SKF: u8 = 53;
}

/// Notify message types (IANA "IKEv2 Notify Message Types").
pub mod notify {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    pub const INVALID_IKE_SPI: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_SYNTAX: u16 = 7;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_SPI: u16 = 11;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    pub const INTERNAL_ADDRESS_FAILURE: u16 = 36;
    pub const FAILED_CP_REQUIRED: u16 = 37;
    pub const TS_UNACCEPTABLE: u16 = 38;
    pub const INVALID_SELECTORS: u16 = 39;
    pub const TEMPORARY_FAILURE: u16 = 43;
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    /// Types below this are errors (section 3.10.1).
    pub const FIRST_STATUS: u16 = 16384;
    pub const INITIAL_CONTACT: u16 = 16384;
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    pub const COOKIE: u16 = 16390;
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    pub const REKEY_SA: u16 = 16393;
    /// RFC 4478: seconds until the responder wants the initiator to reauthenticate.
    pub const AUTH_LIFETIME: u16 = 16403;
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;
    pub const MOBIKE_SUPPORTED: u16 = 16396;
    pub const FRAGMENTATION_SUPPORTED: u16 = 16430;
    pub const SIGNATURE_HASH_ALGORITHMS: u16 = 16431;
}

/// Security protocol IDs (section 3.3.1).
pub mod protocol {
    pub const IKE: u8 = 1;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
}

/// Transform types and IDs (section 3.3.2, IANA registries).
pub mod transform {
    pub const ENCR: u8 = 1;
    pub const PRF: u8 = 2;
    pub const INTEG: u8 = 3;
    pub const DH: u8 = 4;
    pub const ESN: u8 = 5;

    pub const ENCR_AES_CBC: u16 = 12;
    pub const ENCR_AES_GCM_16: u16 = 20;
    pub const ENCR_CHACHA20_POLY1305: u16 = 28;

    pub const PRF_HMAC_SHA2_256: u16 = 5;
    pub const PRF_HMAC_SHA2_384: u16 = 6;
    pub const PRF_HMAC_SHA2_512: u16 = 7;

    pub const AUTH_NONE: u16 = 0;
    pub const AUTH_HMAC_SHA2_256_128: u16 = 12;
    pub const AUTH_HMAC_SHA2_384_192: u16 = 13;
    pub const AUTH_HMAC_SHA2_512_256: u16 = 14;

    pub const DH_MODP_2048: u16 = 14;
    pub const DH_ECP_256: u16 = 19;
    pub const DH_ECP_384: u16 = 20;
    pub const DH_X25519: u16 = 31;

    pub const ESN_NONE: u16 = 0;
    pub const ESN_EXTENDED: u16 = 1;

    /// Transform attribute Key Length, TV format (section 3.3.5).
    pub const ATTR_KEY_LENGTH: u16 = 14;
}

/// Identification types (section 3.5).
pub mod id_type {
    pub const IPV4_ADDR: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const RFC822_ADDR: u8 = 3;
    pub const IPV6_ADDR: u8 = 5;
    pub const DER_ASN1_DN: u8 = 9;
    pub const KEY_ID: u8 = 11;
}

/// Authentication methods (section 3.8).
pub mod auth_method {
    pub const SHARED_KEY_MIC: u8 = 2;
}

/// Traffic selector types (section 3.13.1).
pub mod ts_type {
    pub const IPV4_ADDR_RANGE: u8 = 7;
    pub const IPV6_ADDR_RANGE: u8 = 8;
}

/// The fixed IKE header (section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub spi_i: u64,
    pub spi_r: u64,
    pub next_payload: u8,
    pub version: u8,
    pub exchange: u8,
    pub flags: u8,
    pub message_id: u32,
    pub length: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let h = Header {
            spi_i: u64::from_be_bytes(b[0..8].try_into().map_err(|_| Error::Truncated)?),
            spi_r: u64::from_be_bytes(b[8..16].try_into().map_err(|_| Error::Truncated)?),
            next_payload: b[16],
            version: b[17],
            exchange: b[18],
            flags: b[19],
            message_id: be32(b, 20),
            length: be32(b, 24),
        };
        if (h.length as usize) < HEADER_LEN {
            return Err(Error::Malformed);
        }
        Ok(h)
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.extend_from_slice(&[self.next_payload, self.version, self.exchange, self.flags]);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    pub fn is_initiator(&self) -> bool {
        self.flags & FLAG_INITIATOR != 0
    }
}

/// A transform (section 3.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    pub kind: u8,
    pub id: u16,
    /// The Key Length attribute in bits, if present.
    pub key_len: Option<u16>,
}

/// A proposal (section 3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub num: u8,
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub kind: u16,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub protocol: u8,
    pub spi_size: u8,
    pub spis: Vec<Vec<u8>>,
}

/// One traffic selector (section 3.13.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficSelector {
    pub ts_type: u8,
    pub ip_protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    pub id_type: u8,
    pub data: Vec<u8>,
}

impl Identification {
    /// The payload body (type, reserved, data): what MACedIDFor{I,R} and
    /// the RFC 7296 section 2.15 AUTH computation sign.
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(4 + self.data.len());
        b.extend_from_slice(&[self.id_type, 0, 0, 0]);
        b.extend_from_slice(&self.data);
        b
    }
}

/// A payload, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Sa(Vec<Proposal>),
    Ke {
        group: u16,
        data: Vec<u8>,
    },
    IdI(Identification),
    IdR(Identification),
    Auth {
        method: u8,
        data: Vec<u8>,
    },
    Nonce(Vec<u8>),
    Notify(Notify),
    Delete(Delete),
    Vendor(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    /// Encrypted and authenticated (section 3.14): the first inner payload
    /// type and the body (IV, ciphertext, ICV).
    Sk {
        first: u8,
        body: Vec<u8>,
    },
    /// Anything else, kept as it came.
    Unknown {
        kind: u8,
        critical: bool,
        body: Vec<u8>,
    },
}

impl Payload {
    pub fn kind(&self) -> u8 {
        match self {
            Payload::Sa(_) => payload::SA,
            Payload::Ke { .. } => payload::KE,
            Payload::IdI(_) => payload::IDI,
            Payload::IdR(_) => payload::IDR,
            Payload::Auth { .. } => payload::AUTH,
            Payload::Nonce(_) => payload::NONCE,
            Payload::Notify(_) => payload::NOTIFY,
            Payload::Delete(_) => payload::DELETE,
            Payload::Vendor(_) => payload::VENDOR,
            Payload::TsI(_) => payload::TSI,
            Payload::TsR(_) => payload::TSR,
            Payload::Sk { .. } => payload::SK,
            Payload::Unknown { kind, .. } => *kind,
        }
    }

    fn parse(kind: u8, critical: bool, b: &[u8]) -> Result<Payload> {
        Ok(match kind {
            payload::SA => Payload::Sa(parse_proposals(b)?),
            payload::KE => {
                need(b, 4)?;
                Payload::Ke { group: be16(b, 0), data: b[4..].to_vec() }
            }
            payload::IDI | payload::IDR => {
                need(b, 4)?;
                let id = Identification { id_type: b[0], data: b[4..].to_vec() };
                if kind == payload::IDI { Payload::IdI(id) } else { Payload::IdR(id) }
            }
            payload::AUTH => {
                need(b, 4)?;
                Payload::Auth { method: b[0], data: b[4..].to_vec() }
            }
            payload::NONCE => {
                // Nonces are 16-256 bytes (section 3.9).
                if !(16..=256).contains(&b.len()) {
                    return Err(Error::Malformed);
                }
                Payload::Nonce(b.to_vec())
            }
            payload::NOTIFY => {
                need(b, 4)?;
                let spi_size = usize::from(b[1]);
                need(b, 4 + spi_size)?;
                Payload::Notify(Notify {
                    protocol: b[0],
                    spi: b[4..4 + spi_size].to_vec(),
                    kind: be16(b, 2),
                    data: b[4 + spi_size..].to_vec(),
                })
            }
            payload::DELETE => {
                need(b, 4)?;
                let (spi_size, n) = (usize::from(b[1]), usize::from(be16(b, 2)));
                if b.len() != 4 + spi_size * n {
                    return Err(Error::Malformed);
                }
                let spis = (0..n).map(|i| b[4 + i * spi_size..4 + (i + 1) * spi_size].to_vec()).collect();
                Payload::Delete(Delete { protocol: b[0], spi_size: b[1], spis })
            }
            payload::VENDOR => Payload::Vendor(b.to_vec()),
            payload::TSI => Payload::TsI(parse_selectors(b)?),
            payload::TSR => Payload::TsR(parse_selectors(b)?),
            _ => Payload::Unknown { kind, critical, body: b.to_vec() },
        })
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => emit_proposals(props, out),
            Payload::Ke { group, data } => {
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[*method, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(n) => out.extend_from_slice(n),
            Payload::Notify(n) => {
                out.extend_from_slice(&[n.protocol, n.spi.len() as u8]);
                out.extend_from_slice(&n.kind.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.extend_from_slice(&[d.protocol, d.spi_size]);
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                for s in &d.spis {
                    out.extend_from_slice(s);
                }
            }
            Payload::Vendor(v) => out.extend_from_slice(v),
            Payload::TsI(ts) | Payload::TsR(ts) => {
                out.extend_from_slice(&[ts.len() as u8, 0, 0, 0]);
                for t in ts {
                    let len = 8 + t.start.len() + t.end.len();
                    out.extend_from_slice(&[t.ts_type, t.ip_protocol]);
                    out.extend_from_slice(&(len as u16).to_be_bytes());
                    out.extend_from_slice(&t.start_port.to_be_bytes());
                    out.extend_from_slice(&t.end_port.to_be_bytes());
                    out.extend_from_slice(&t.start);
                    out.extend_from_slice(&t.end);
                }
            }
            Payload::Sk { body, .. } => out.extend_from_slice(body),
            Payload::Unknown { body, .. } => out.extend_from_slice(body),
        }
    }
}

fn need(b: &[u8], n: usize) -> Result<()> {
    if b.len() < n { Err(Error::Truncated) } else { Ok(()) }
}

fn parse_proposals(mut b: &[u8]) -> Result<Vec<Proposal>> {
    let mut out = Vec::new();
    loop {
        need(b, 8)?;
        let last = b[0];
        let len = usize::from(be16(b, 2));
        if len < 8 || len > b.len() {
            return Err(Error::Malformed);
        }
        let (p, rest) = b.split_at(len);
        let spi_size = usize::from(p[6]);
        let n = usize::from(p[7]);
        need(p, 8 + spi_size)?;
        let mut t = &p[8 + spi_size..];
        let mut transforms = Vec::with_capacity(n);
        for i in 0..n {
            need(t, 8)?;
            let tlen = usize::from(be16(t, 2));
            if tlen < 8 || tlen > t.len() || (t[0] == 0) != (i + 1 == n) {
                return Err(Error::Malformed);
            }
            let mut attrs = &t[8..tlen];
            let mut key_len = None;
            while !attrs.is_empty() {
                need(attrs, 4)?;
                let at = be16(attrs, 0);
                if at & 0x8000 != 0 {
                    if at & 0x7fff == transform::ATTR_KEY_LENGTH {
                        key_len = Some(be16(attrs, 2));
                    }
                    attrs = &attrs[4..];
                } else {
                    // TLV attributes: skip (none are defined for IKEv2 transforms).
                    let alen = 4 + usize::from(be16(attrs, 2));
                    need(attrs, alen)?;
                    attrs = &attrs[alen..];
                }
            }
            transforms.push(Transform { kind: t[4], id: be16(t, 6), key_len });
            t = &t[tlen..];
        }
        if !t.is_empty() {
            return Err(Error::Malformed);
        }
        out.push(Proposal { num: p[4], protocol: p[5], spi: p[8..8 + spi_size].to_vec(), transforms });
        b = rest;
        match last {
            0 if b.is_empty() => return Ok(out),
            2 if !b.is_empty() => continue,
            _ => return Err(Error::Malformed),
        }
    }
}

fn emit_proposals(props: &[Proposal], out: &mut Vec<u8>) {
    for (pi, p) in props.iter().enumerate() {
        let start = out.len();
        out.extend_from_slice(&[if pi + 1 == props.len() { 0 } else { 2 }, 0, 0, 0]);
        out.extend_from_slice(&[p.num, p.protocol, p.spi.len() as u8, p.transforms.len() as u8]);
        out.extend_from_slice(&p.spi);
        for (ti, t) in p.transforms.iter().enumerate() {
            let tlen: u16 = if t.key_len.is_some() { 12 } else { 8 };
            out.extend_from_slice(&[if ti + 1 == p.transforms.len() { 0 } else { 3 }, 0]);
            out.extend_from_slice(&tlen.to_be_bytes());
            out.extend_from_slice(&[t.kind, 0]);
            out.extend_from_slice(&t.id.to_be_bytes());
            if let Some(k) = t.key_len {
                out.extend_from_slice(&(0x8000 | transform::ATTR_KEY_LENGTH).to_be_bytes());
                out.extend_from_slice(&k.to_be_bytes());
            }
        }
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn parse_selectors(b: &[u8]) -> Result<Vec<TrafficSelector>> {
    need(b, 4)?;
    let n = usize::from(b[0]);
    let mut t = &b[4..];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        need(t, 8)?;
        let len = usize::from(be16(t, 2));
        let alen = match t[0] {
            ts_type::IPV4_ADDR_RANGE => 4,
            ts_type::IPV6_ADDR_RANGE => 16,
            _ => (len.saturating_sub(8)) / 2,
        };
        if len != 8 + 2 * alen || len > t.len() {
            return Err(Error::Malformed);
        }
        out.push(TrafficSelector {
            ts_type: t[0],
            ip_protocol: t[1],
            start_port: be16(t, 4),
            end_port: be16(t, 6),
            start: t[8..8 + alen].to_vec(),
            end: t[8 + alen..len].to_vec(),
        });
        t = &t[len..];
    }
    if !t.is_empty() {
        return Err(Error::Malformed);
    }
    Ok(out)
}

/// Parse a payload chain starting with payload type `first`. An SK payload
/// ends the chain (section 3.14: it must be last); its inner first type is
/// kept for decryption.
pub fn parse_chain(first: u8, mut b: &[u8]) -> Result<Vec<Payload>> {
    let mut out = Vec::new();
    let mut kind = first;
    while kind != payload::NONE {
        need(b, GENERIC_HEADER_LEN)?;
        let next = b[0];
        let critical = b[1] & 0x80 != 0;
        let len = usize::from(be16(b, 2));
        if len < GENERIC_HEADER_LEN || len > b.len() {
            return Err(Error::Malformed);
        }
        let body = &b[GENERIC_HEADER_LEN..len];
        if kind == payload::SK {
            out.push(Payload::Sk { first: next, body: body.to_vec() });
            return if len == b.len() { Ok(out) } else { Err(Error::Malformed) };
        }
        out.push(Payload::parse(kind, critical, body)?);
        b = &b[len..];
        kind = next;
    }
    if b.is_empty() { Ok(out) } else { Err(Error::Malformed) }
}

/// Emit a payload chain; returns the first payload's type (0 if empty).
pub fn emit_chain(payloads: &[Payload], out: &mut Vec<u8>) -> u8 {
    for (i, p) in payloads.iter().enumerate() {
        let next = match p {
            // The SK payload's Next Payload names the first inner payload.
            Payload::Sk { first, .. } => *first,
            _ => payloads.get(i + 1).map_or(payload::NONE, Payload::kind),
        };
        let start = out.len();
        let critical = matches!(p, Payload::Unknown { critical: true, .. });
        out.extend_from_slice(&[next, if critical { 0x80 } else { 0 }, 0, 0]);
        p.emit_body(out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    payloads.first().map_or(payload::NONE, Payload::kind)
}

/// A whole message: header and payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Parse a datagram. The header's length must match the datagram.
    pub fn parse(b: &[u8]) -> Result<Message> {
        let header = Header::parse(b)?;
        if header.length as usize != b.len() {
            return Err(Error::Malformed);
        }
        let payloads = parse_chain(header.next_payload, &b[HEADER_LEN..])?;
        Ok(Message { header, payloads })
    }

    /// Emit with the header's next payload and length filled in.
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

    fn sample() -> Message {
        Message {
            header: Header {
                spi_i: 0x0102_0304_0506_0708,
                spi_r: 0,
                next_payload: 0,
                version: VERSION,
                exchange: exchange::IKE_SA_INIT,
                flags: FLAG_INITIATOR,
                message_id: 0,
                length: 0,
            },
            payloads: vec![
                Payload::Sa(vec![
                    Proposal {
                        num: 1,
                        protocol: protocol::IKE,
                        spi: vec![],
                        transforms: vec![
                            Transform { kind: transform::ENCR, id: transform::ENCR_AES_GCM_16, key_len: Some(256) },
                            Transform { kind: transform::PRF, id: transform::PRF_HMAC_SHA2_256, key_len: None },
                            Transform { kind: transform::DH, id: transform::DH_X25519, key_len: None },
                        ],
                    },
                    Proposal {
                        num: 2,
                        protocol: protocol::IKE,
                        spi: vec![],
                        transforms: vec![Transform { kind: transform::DH, id: transform::DH_MODP_2048, key_len: None }],
                    },
                ]),
                Payload::Ke { group: transform::DH_X25519, data: vec![9; 32] },
                Payload::Nonce(vec![7; 32]),
                Payload::Notify(Notify {
                    protocol: 0,
                    spi: vec![],
                    kind: notify::NAT_DETECTION_SOURCE_IP,
                    data: vec![1; 20],
                }),
                Payload::IdI(Identification { id_type: id_type::FQDN, data: b"gwa.interop.test".to_vec() }),
                Payload::Auth { method: auth_method::SHARED_KEY_MIC, data: vec![3; 32] },
                Payload::TsI(vec![TrafficSelector {
                    ts_type: ts_type::IPV4_ADDR_RANGE,
                    ip_protocol: 0,
                    start_port: 0,
                    end_port: 65535,
                    start: vec![198, 18, 1, 0],
                    end: vec![198, 18, 1, 255],
                }]),
                Payload::Delete(Delete {
                    protocol: protocol::ESP,
                    spi_size: 4,
                    spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
                }),
                Payload::Unknown { kind: 200, critical: true, body: vec![1, 2] },
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
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = sample().emit();
        for n in 0..bytes.len() {
            assert!(Message::parse(&bytes[..n]).is_err(), "prefix {n}");
        }
        for i in HEADER_LEN..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = Message::parse(&b);
            }
        }
    }

    #[test]
    fn sk_payload_ends_the_chain() {
        let m = Message {
            header: sample().header,
            payloads: vec![Payload::Sk { first: payload::IDI, body: vec![0xaa; 40] }],
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
