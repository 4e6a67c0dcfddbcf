//! The SA payload's proposals and transforms (RFC 7296 section 3.3).
use alloc::vec::Vec;

use super::registry::{ATTR_KEY_LENGTH, ProtocolId, TransformType};
use crate::{Error, Result, be16};

/// A transform (section 3.3.2). Its ID's registry depends on its type
/// (`EncrId`, `PrfId`, `IntegId`, `DhGroup`, `EsnId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    /// The transform type (ENCR, PRF, INTEG, D-H, ESN).
    pub kind: TransformType,
    /// The Transform ID, raw.
    pub id: u16,
    /// The Key Length attribute in bits, if present.
    pub key_len: Option<u16>,
}

/// A proposal (section 3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The Proposal Num; a responder's answer repeats the chosen one's.
    pub num: u8,
    /// The Protocol ID: IKE or ESP.
    pub protocol: ProtocolId,
    /// The sender's SPI for the SA (empty in IKE_SA_INIT).
    pub spi: Vec<u8>,
    /// The transforms, in the sender's order.
    pub transforms: Vec<Transform>,
}

fn need(b: &[u8], n: usize) -> Result<()> {
    if b.len() < n { Err(Error::Truncated) } else { Ok(()) }
}

/// The proposals of an SA payload's body; every length is checked first.
pub fn parse(mut b: &[u8]) -> Result<Vec<Proposal>> {
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
            // Last Substruc is 0 on the last transform only, 3 on the others.
            if tlen < 8 || tlen > t.len() || (t[0] == 0) != (i + 1 == n) {
                return Err(Error::Malformed);
            }
            let mut attrs = &t[8..tlen];
            let mut key_len = None;
            while !attrs.is_empty() {
                need(attrs, 4)?;
                let at = be16(attrs, 0);
                if at & 0x8000 != 0 {
                    if at & 0x7fff == ATTR_KEY_LENGTH {
                        key_len = Some(be16(attrs, 2));
                    }
                    attrs = &attrs[4..];
                } else {
                    // TLV attributes: skipped (none are defined for IKEv2 transforms).
                    let alen = 4 + usize::from(be16(attrs, 2));
                    need(attrs, alen)?;
                    attrs = &attrs[alen..];
                }
            }
            transforms.push(Transform { kind: t[4].into(), id: be16(t, 6), key_len });
            t = &t[tlen..];
        }
        if !t.is_empty() {
            return Err(Error::Malformed);
        }
        out.push(Proposal { num: p[4], protocol: p[5].into(), spi: p[8..8 + spi_size].to_vec(), transforms });
        b = rest;
        match last {
            0 if b.is_empty() => return Ok(out),
            2 if !b.is_empty() => continue,
            _ => return Err(Error::Malformed),
        }
    }
}

/// Append the proposals as an SA payload's body.
pub fn emit(props: &[Proposal], out: &mut Vec<u8>) {
    for (pi, p) in props.iter().enumerate() {
        let start = out.len();
        out.extend_from_slice(&[if pi + 1 == props.len() { 0 } else { 2 }, 0, 0, 0]);
        out.extend_from_slice(&[p.num, p.protocol.raw(), p.spi.len() as u8, p.transforms.len() as u8]);
        out.extend_from_slice(&p.spi);
        for (ti, t) in p.transforms.iter().enumerate() {
            let tlen: u16 = if t.key_len.is_some() { 12 } else { 8 };
            out.extend_from_slice(&[if ti + 1 == p.transforms.len() { 0 } else { 3 }, 0]);
            out.extend_from_slice(&tlen.to_be_bytes());
            out.extend_from_slice(&[t.kind.raw(), 0]);
            out.extend_from_slice(&t.id.to_be_bytes());
            if let Some(k) = t.key_len {
                out.extend_from_slice(&(0x8000 | ATTR_KEY_LENGTH).to_be_bytes());
                out.extend_from_slice(&k.to_be_bytes());
            }
        }
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}
