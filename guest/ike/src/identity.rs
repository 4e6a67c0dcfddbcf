//! IKE identities (RFC 7296 section 3.5) written as strongSwan writes them:
//! `gw.example.com` or `@gw.example.com` (FQDN), `user@example.com`
//! (RFC 822), an IPv4 or IPv6 address, `keyid:#0a1b...` or `@#0a1b...` (KEY_ID
//! in hex), `keyid:text` (KEY_ID holding the text), and
//! `C=CH, O=Org, CN=gw` (DER ASN.1 DN). `%any` matches every identity.
use std::fmt;
use std::net::IpAddr;

use wasmsec_wire::ike::{IdType, Identification};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Any,
    Id(Identification),
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// OIDs of the DN attributes strongSwan users write.
fn dn_oid(name: &str) -> Option<&'static [u8]> {
    Some(match name.to_ascii_uppercase().as_str() {
        "CN" => &[0x55, 0x04, 0x03],
        "C" => &[0x55, 0x04, 0x06],
        "L" => &[0x55, 0x04, 0x07],
        "ST" => &[0x55, 0x04, 0x08],
        "O" => &[0x55, 0x04, 0x0a],
        "OU" => &[0x55, 0x04, 0x0b],
        "SN" => &[0x55, 0x04, 0x05],
        "E" | "EMAIL" => &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        _ => return None,
    })
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = body.len();
    if n < 0x80 {
        v.push(n as u8);
    } else if n < 0x100 {
        v.extend_from_slice(&[0x81, n as u8]);
    } else {
        v.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    v.extend_from_slice(body);
    v
}

/// Encode `C=CH, O=Org, CN=gw` as a DER Name (RFC 5280 section 4.1.2.4),
/// as strongSwan does: one attribute per RDN.
fn encode_dn(s: &str) -> Option<Vec<u8>> {
    let mut rdns = Vec::new();
    for part in s.split([',', '/']).map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=')?;
        let oid = dn_oid(k.trim())?;
        // strongSwan's choice, so that byte-wise comparison matches its IDs:
        // IA5String for e-mail, PrintableString when the value allows it,
        // UTF8String otherwise.
        let printable = v.trim().bytes().all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b));
        let tag = match k.trim().to_ascii_uppercase().as_str() {
            "E" | "EMAIL" => 0x16,
            _ if printable => 0x13,
            _ => 0x0c,
        };
        let mut atv = der(0x06, oid);
        atv.extend(der(tag, v.trim().as_bytes()));
        rdns.extend(der(0x31, &der(0x30, &atv)));
    }
    if rdns.is_empty() { None } else { Some(der(0x30, &rdns)) }
}

impl Identity {
    pub fn parse(s: &str) -> Result<Identity, String> {
        let s = s.trim();
        let id = |t, d: Vec<u8>| Ok(Identity::Id(Identification { id_type: t, data: d }));
        if s.is_empty() {
            return Err("empty identity".into());
        }
        if s == "%any" {
            return Ok(Identity::Any);
        }
        // As strongSwan: `keyid:#0a0b` and `@#0a0b` are hex, `keyid:text` is the text.
        if let Some(k) = s.strip_prefix("keyid:#").or_else(|| s.strip_prefix("@#")) {
            return id(IdType::KeyId, hex(k).ok_or(format!("identity {s:?}: key ID is not hex"))?);
        }
        if let Some(k) = s.strip_prefix("keyid:") {
            return id(IdType::KeyId, k.as_bytes().to_vec());
        }
        if let Some(f) = s.strip_prefix('@') {
            return id(IdType::Fqdn, f.as_bytes().to_vec());
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return match ip {
                IpAddr::V4(a) => id(IdType::Ipv4Addr, a.octets().to_vec()),
                IpAddr::V6(a) => id(IdType::Ipv6Addr, a.octets().to_vec()),
            };
        }
        if s.contains('=') {
            return id(
                IdType::DerAsn1Dn,
                encode_dn(s).ok_or(format!("identity {s:?}: not a DN strongSwan-style (C=.., O=.., CN=..)"))?,
            );
        }
        if s.contains('@') {
            return id(IdType::Rfc822Addr, s.as_bytes().to_vec());
        }
        id(IdType::Fqdn, s.as_bytes().to_vec())
    }

    /// Whether a received identity is acceptable for this configured one.
    pub fn matches(&self, got: &Identification) -> bool {
        match self {
            Identity::Any => true,
            Identity::Id(want) => {
                want.id_type == got.id_type
                    && match want.id_type {
                        IdType::Fqdn | IdType::Rfc822Addr => want.data.eq_ignore_ascii_case(&got.data),
                        _ => want.data == got.data,
                    }
            }
        }
    }
}

/// An identification as an index holds it: two are equal exactly when
/// [`Identity::matches`] takes one for the other (names compare without
/// ASCII case, everything else byte for byte).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct IdKey(IdType, Vec<u8>);

impl IdKey {
    pub fn of(id: &Identification) -> IdKey {
        let data = match id.id_type {
            IdType::Fqdn | IdType::Rfc822Addr => id.data.to_ascii_lowercase(),
            _ => id.data.clone(),
        };
        IdKey(id.id_type, data)
    }
}

/// The kinds of identity a policy module is told (`wasmsec:policy/types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyIdKind {
    Ipv4,
    Ipv6,
    Fqdn,
    Rfc822,
    DerDn,
    KeyId,
}

/// An identification as a policy module is told it: its kind, and its
/// value (addresses and names as text, DNs and other kinds in hex). The
/// component asks with it and the host checks the question with it, so
/// both must say it the same way.
pub fn for_policy(id: &Identification) -> (PolicyIdKind, String) {
    let hex = || id.data.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match id.id_type {
        IdType::Ipv4Addr => (PolicyIdKind::Ipv4, Show(id).to_string()),
        IdType::Ipv6Addr => (PolicyIdKind::Ipv6, Show(id).to_string()),
        IdType::Fqdn => (PolicyIdKind::Fqdn, Show(id).to_string()),
        IdType::Rfc822Addr => (PolicyIdKind::Rfc822, Show(id).to_string()),
        IdType::DerAsn1Dn => (PolicyIdKind::DerDn, hex()),
        _ => (PolicyIdKind::KeyId, hex()),
    }
}

/// An identification as a person reads it, for logs.
pub struct Show<'a>(pub &'a Identification);

/// An ID payload's body (as an IKE SA keeps its peer's) written as
/// `Show` writes the identity; empty for none.
pub fn show_body(body: &[u8]) -> String {
    Identification::from_body(body).map(|i| Show(&i).to_string()).unwrap_or_default()
}

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.0.data;
        match self.0.id_type {
            IdType::Fqdn | IdType::Rfc822Addr => write!(f, "{}", String::from_utf8_lossy(d)),
            IdType::Ipv4Addr if d.len() == 4 => write!(f, "{}.{}.{}.{}", d[0], d[1], d[2], d[3]),
            IdType::Ipv6Addr if d.len() == 16 => {
                let a: [u8; 16] = d[..].try_into().map_err(|_| fmt::Error)?;
                write!(f, "{}", std::net::Ipv6Addr::from(a))
            }
            t => {
                write!(f, "type{t}:")?;
                d.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Any => f.write_str("%any"),
            Identity::Id(i) => Show(i).fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idf(s: &str) -> Identification {
        match Identity::parse(s).unwrap() {
            Identity::Id(i) => i,
            Identity::Any => panic!("any"),
        }
    }

    #[test]
    fn every_type() {
        assert_eq!(idf("gwa.interop.test").id_type, IdType::Fqdn);
        assert_eq!(idf("@gwa.interop.test").data, b"gwa.interop.test");
        assert_eq!(idf("vpn@example.com").id_type, IdType::Rfc822Addr);
        assert_eq!(idf("198.18.0.1").data, vec![198, 18, 0, 1]);
        assert_eq!(idf("2001:db8::1").id_type, IdType::Ipv6Addr);
        assert_eq!(idf("keyid:#0a0b0c").data, vec![10, 11, 12]);
        assert_eq!(idf("@#0a0b0c").data, vec![10, 11, 12]);
        assert_eq!(idf("keyid:0a0b").data, b"0a0b");
        assert_eq!(Identity::parse("%any").unwrap(), Identity::Any);
        let dn = idf("C=CH, O=strongSwan, CN=gw");
        assert_eq!(dn.id_type, IdType::DerAsn1Dn);
        // SEQUENCE { SET { SEQUENCE { OID 2.5.4.6, PrintableString "CH" } } ... }
        assert_eq!(&dn.data[..13], &[0x30, 0x2f, 0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02]);
        assert!(Identity::parse("X=1").is_err());
    }

    #[test]
    fn matching() {
        assert!(Identity::parse("GWA.interop.test").unwrap().matches(&idf("gwa.interop.test")));
        assert!(!Identity::parse("gwb.interop.test").unwrap().matches(&idf("gwa.interop.test")));
        assert!(!Identity::parse("198.18.0.1").unwrap().matches(&idf("gwa.interop.test")));
        assert!(Identity::Any.matches(&idf("anything")));
        assert_eq!(Show(&idf("198.18.0.1")).to_string(), "198.18.0.1");
    }

    #[test]
    fn index_keys_are_equal_exactly_when_identities_match() {
        let ids = [
            "gwa.interop.test",
            "GWA.Interop.Test",
            "gwb.interop.test",
            "vpn@example.com",
            "VPN@Example.COM",
            "198.18.0.1",
            "198.18.0.2",
            "2001:db8::1",
            "keyid:#0a0b0c",
            "keyid:#0A0B0D",
            "C=CH, O=strongSwan, CN=gw",
            "C=CH, O=strongSwan, CN=GW",
        ];
        for a in ids {
            for b in ids {
                let (want, got) = (Identity::parse(a).unwrap(), idf(b));
                assert_eq!(want.matches(&got), IdKey::of(&idf(a)) == IdKey::of(&got), "{a} against {b}");
            }
        }
    }
}
