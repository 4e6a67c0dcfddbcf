//! Payloads and the generic payload chain (RFC 7296 sections 3.2-3.16).
//!
//! Parsing walks the chain checking every length before reading, so no
//! input panics; unknown payloads are kept (and flagged if critical,
//! section 2.5).
use alloc::vec::Vec;

use super::registry::{AuthMethod, IdType, NotifyType, PayloadType, ProtocolId};
use super::sa::{self, Proposal};
use super::ts::{self, TrafficSelector};
use crate::{Error, Result, be16};

pub const GENERIC_HEADER_LEN: usize = 4;

/// A Notify payload (section 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Protocol ID of the SA it concerns (`None`: about no particular SA).
    pub protocol: ProtocolId,
    /// SPI of that SA (empty when none).
    pub spi: Vec<u8>,
    /// The Notify Message Type (section 3.10.1).
    pub kind: NotifyType,
    /// The notification data, as the type defines it.
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify about no particular SA (protocol 0, no SPI).
    pub fn new(kind: NotifyType, data: Vec<u8>) -> Notify {
        Notify { protocol: ProtocolId::None, spi: Vec::new(), kind, data }
    }
}

/// A Delete payload (section 3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Protocol ID of the SAs: IKE or ESP.
    pub protocol: ProtocolId,
    /// SPI size in bytes: 0 for the IKE SA, 4 for ESP.
    pub spi_size: u8,
    /// The SPIs of the SAs to delete (none for the IKE SA).
    pub spis: Vec<Vec<u8>>,
}

/// An IDi or IDr payload (section 3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    /// The ID Type (FQDN, IPv4 address, ...).
    pub id_type: IdType,
    /// The identification data, as the ID Type defines it.
    pub data: Vec<u8>,
}

impl Identification {
    /// The payload body (type, reserved, data): what MACedIDFor{I,R} and
    /// the section 2.15 AUTH computation sign.
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(4 + self.data.len());
        b.extend_from_slice(&[self.id_type.raw(), 0, 0, 0]);
        b.extend_from_slice(&self.data);
        b
    }

    /// The identification whose [`Identification::body`] this is; none if
    /// it is shorter than the type and reserved bytes.
    pub fn from_body(body: &[u8]) -> Option<Identification> {
        let (head, data) = body.split_at_checked(4)?;
        Some(Identification { id_type: head[0].into(), data: data.to_vec() })
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
        method: AuthMethod,
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
        first: PayloadType,
        body: Vec<u8>,
    },
    /// Anything else, kept as it came.
    Unknown {
        kind: PayloadType,
        critical: bool,
        body: Vec<u8>,
    },
}

fn need(b: &[u8], n: usize) -> Result<()> {
    if b.len() < n { Err(Error::Truncated) } else { Ok(()) }
}

impl Payload {
    pub fn kind(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::Sa,
            Payload::Ke { .. } => PayloadType::Ke,
            Payload::IdI(_) => PayloadType::IdI,
            Payload::IdR(_) => PayloadType::IdR,
            Payload::Auth { .. } => PayloadType::Auth,
            Payload::Nonce(_) => PayloadType::Nonce,
            Payload::Notify(_) => PayloadType::Notify,
            Payload::Delete(_) => PayloadType::Delete,
            Payload::Vendor(_) => PayloadType::Vendor,
            Payload::TsI(_) => PayloadType::TsI,
            Payload::TsR(_) => PayloadType::TsR,
            Payload::Sk { .. } => PayloadType::Sk,
            Payload::Unknown { kind, .. } => *kind,
        }
    }

    /// A notify about no particular SA.
    pub fn notify(kind: NotifyType, data: Vec<u8>) -> Payload {
        Payload::Notify(Notify::new(kind, data))
    }

    fn parse(kind: PayloadType, critical: bool, b: &[u8]) -> Result<Payload> {
        Ok(match kind {
            PayloadType::Sa => Payload::Sa(sa::parse(b)?),
            PayloadType::Ke => {
                need(b, 4)?;
                Payload::Ke { group: be16(b, 0), data: b[4..].to_vec() }
            }
            PayloadType::IdI | PayloadType::IdR => {
                need(b, 4)?;
                let id = Identification { id_type: b[0].into(), data: b[4..].to_vec() };
                if kind == PayloadType::IdI { Payload::IdI(id) } else { Payload::IdR(id) }
            }
            PayloadType::Auth => {
                need(b, 4)?;
                Payload::Auth { method: b[0].into(), data: b[4..].to_vec() }
            }
            PayloadType::Nonce => {
                // Nonces are 16-256 bytes (section 3.9).
                if !(16..=256).contains(&b.len()) {
                    return Err(Error::Malformed);
                }
                Payload::Nonce(b.to_vec())
            }
            PayloadType::Notify => {
                need(b, 4)?;
                let spi_size = usize::from(b[1]);
                need(b, 4 + spi_size)?;
                Payload::Notify(Notify {
                    protocol: b[0].into(),
                    spi: b[4..4 + spi_size].to_vec(),
                    kind: be16(b, 2).into(),
                    data: b[4 + spi_size..].to_vec(),
                })
            }
            PayloadType::Delete => {
                need(b, 4)?;
                let (spi_size, n) = (usize::from(b[1]), usize::from(be16(b, 2)));
                // Section 3.11: an IKE SA's Delete has SPI Size 0 and no
                // SPIs (they are in the header). Zero-sized SPIs would
                // pass the length check in any number: 65,535 of them in
                // 8 bytes, each an allocation, and a few such payloads in
                // one unauthenticated IKE_SA_INIT exhausted the guest.
                if (spi_size == 0 && n != 0) || b.len() != 4 + spi_size * n {
                    return Err(Error::Malformed);
                }
                let spis = (0..n).map(|i| b[4 + i * spi_size..4 + (i + 1) * spi_size].to_vec()).collect();
                Payload::Delete(Delete { protocol: b[0].into(), spi_size: b[1], spis })
            }
            PayloadType::Vendor => Payload::Vendor(b.to_vec()),
            PayloadType::TsI => Payload::TsI(ts::parse(b)?),
            PayloadType::TsR => Payload::TsR(ts::parse(b)?),
            _ => Payload::Unknown { kind, critical, body: b.to_vec() },
        })
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => sa::emit(props, out),
            Payload::Ke { group, data } => {
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[method.raw(), 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(n) => out.extend_from_slice(n),
            Payload::Notify(n) => {
                out.extend_from_slice(&[n.protocol.raw(), n.spi.len() as u8]);
                out.extend_from_slice(&n.kind.raw().to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.extend_from_slice(&[d.protocol.raw(), d.spi_size]);
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                for s in &d.spis {
                    out.extend_from_slice(s);
                }
            }
            Payload::Vendor(v) => out.extend_from_slice(v),
            Payload::TsI(t) | Payload::TsR(t) => ts::emit(t, out),
            Payload::Sk { body, .. } => out.extend_from_slice(body),
            Payload::Unknown { body, .. } => out.extend_from_slice(body),
        }
    }
}

/// Parse a payload chain starting with payload type `first`. An SK payload
/// ends the chain (section 3.14: it must be last); its inner first type is
/// kept for decryption.
pub fn parse_chain(first: PayloadType, mut b: &[u8]) -> Result<Vec<Payload>> {
    let mut out = Vec::new();
    let mut kind = first;
    while kind != PayloadType::None {
        need(b, GENERIC_HEADER_LEN)?;
        let next = PayloadType::from(b[0]);
        let critical = b[1] & 0x80 != 0;
        let len = usize::from(be16(b, 2));
        if len < GENERIC_HEADER_LEN || len > b.len() {
            return Err(Error::Malformed);
        }
        let body = &b[GENERIC_HEADER_LEN..len];
        if kind == PayloadType::Sk {
            out.push(Payload::Sk { first: next, body: body.to_vec() });
            return if len == b.len() { Ok(out) } else { Err(Error::Malformed) };
        }
        out.push(Payload::parse(kind, critical, body)?);
        b = &b[len..];
        kind = next;
    }
    if b.is_empty() { Ok(out) } else { Err(Error::Malformed) }
}

/// Append a payload chain; returns the first payload's type (none if empty).
pub fn emit_chain(payloads: &[Payload], out: &mut Vec<u8>) -> PayloadType {
    for (i, p) in payloads.iter().enumerate() {
        let next = match p {
            // The SK payload's Next Payload names the first inner payload.
            Payload::Sk { first, .. } => *first,
            _ => payloads.get(i + 1).map_or(PayloadType::None, Payload::kind),
        };
        let start = out.len();
        let critical = matches!(p, Payload::Unknown { critical: true, .. });
        out.extend_from_slice(&[next.raw(), if critical { 0x80 } else { 0 }, 0, 0]);
        p.emit_body(out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    payloads.first().map_or(PayloadType::None, Payload::kind)
}
