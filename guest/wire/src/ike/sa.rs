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
            // Section 3.3.5: Key Length (TV) is the one attribute IKEv2
            // defines. Anything else, or a second Key Length, is refused
            // here rather than dropped: a transform whose attributes were
            // silently ignored could be accepted for what it is not, and
            // what we parse must be what we would emit.
            let key_len = match &t[8..tlen] {
                [] => None,
                [a, b, k0, k1] if u16::from_be_bytes([*a, *b]) == 0x8000 | ATTR_KEY_LENGTH => {
                    Some(u16::from_be_bytes([*k0, *k1]))
                }
                _ => return Err(Error::Malformed),
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// One proposal with one ENCR transform whose attributes are `attrs`.
    fn with_attrs(attrs: &[u8]) -> Vec<u8> {
        let tlen = 8 + attrs.len() as u16;
        let plen = 8 + tlen;
        let mut b = vec![0, 0];
        b.extend(plen.to_be_bytes());
        b.extend([1, 1, 0, 1, 0, 0]);
        b.extend(tlen.to_be_bytes());
        b.extend([1, 0, 0, 20]);
        b.extend_from_slice(attrs);
        b
    }

    #[test]
    fn only_one_key_length_attribute_is_accepted() {
        let p = parse(&with_attrs(&[0x80, 14, 1, 0])).unwrap();
        assert_eq!(p[0].transforms[0].key_len, Some(256));
        let mut again = Vec::new();
        emit(&p, &mut again);
        assert_eq!(again, with_attrs(&[0x80, 14, 1, 0]));
        // A second Key Length, an unknown TV attribute, a TLV attribute.
        for attrs in [&[0x80, 14, 1, 0, 0x80, 14, 0, 128][..], &[0x80, 15, 0, 1], &[0, 14, 0, 2, 1, 0]] {
            assert_eq!(parse(&with_attrs(attrs)), Err(Error::Malformed), "{attrs:?}");
        }
    }
}
