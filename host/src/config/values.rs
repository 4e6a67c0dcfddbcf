//! The values a config file holds, each parsed (and checked) once when the
//! file is read: prefixes, SPIs, key sources, ESP algorithms, proposals,
//! identities. A bad value is a deserialization error, so it carries the
//! file's line.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::keys::EspAlgorithm;
use crate::wasm::esp::TrafficSelector;

/// A CIDR prefix, e.g. `198.18.1.0/24` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// The address as written; host bits may be set.
    pub addr: IpAddr,
    /// Prefix length in bits (at most 32 for IPv4, 128 for IPv6).
    pub len: u8,
}

impl Prefix {
    pub fn parse(s: &str) -> Result<Prefix, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an address or CIDR prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max).ok_or(format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Prefix { addr, len })
    }

    /// The prefix's first and last address, as bytes.
    fn range(&self) -> (Vec<u8>, Vec<u8>) {
        match self.addr {
            IpAddr::V4(a) => {
                let v = u32::from(a);
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - self.len) };
                ((v & mask).to_be_bytes().to_vec(), (v | !mask).to_be_bytes().to_vec())
            }
            IpAddr::V6(a) => {
                let v = u128::from(a);
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - self.len) };
                ((v & mask).to_be_bytes().to_vec(), (v | !mask).to_be_bytes().to_vec())
            }
        }
    }

    /// Does the prefix hold this address?
    pub fn contains(&self, a: &IpAddr) -> bool {
        let (start, end) = self.range();
        let b = match a {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        };
        b.len() == start.len() && start <= b && b <= end
    }

    /// The prefix as a traffic selector (any protocol, any port).
    pub fn selector(&self) -> TrafficSelector {
        let (start, end) = self.range();
        TrafficSelector::addresses(start, end)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Prefix::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A traffic selector in strongSwan's notation (`198.18.1.0/24`, or a
/// range, with the protocol and ports when they are not "any").
pub fn show_ts(t: &TrafficSelector) -> String {
    let w = wasmsec_wire::ike::TrafficSelector {
        ts_type: if t.start_address.len() == 4 {
            wasmsec_wire::ike::TsType::Ipv4AddrRange
        } else {
            wasmsec_wire::ike::TsType::Ipv6AddrRange
        },
        ip_protocol: t.ip_protocol,
        start_port: t.start_port,
        end_port: t.end_port,
        start: t.start_address.clone(),
        end: t.end_address.clone(),
    };
    wasmsec_ike::ts::show(&w)
}

/// A non-empty list of prefixes.
pub fn prefixes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Prefix>, D::Error> {
    let v = Vec::<Prefix>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("at least one subnet is needed"));
    }
    Ok(v)
}

/// Peer addresses; `%any` (or an empty list) means any.
pub fn any_or_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .filter(|a| a.as_str() != "%any")
        .map(|a| a.parse().map_err(|_| serde::de::Error::custom(format!("{a:?} is not an address or %any"))))
        .collect()
}

impl<'de> Deserialize<'de> for EspAlgorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EspAlgorithm::from_name(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "algorithm {s:?} is not supported (aes128gcm16, aes256gcm16, chacha20poly1305, \
                 aes128|aes256-sha256|sha384|sha512)"
            ))
        })
    }
}

/// Proposals in strongSwan's syntax, checked when read (the IKE engine
/// parses them again on its side of the boundary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposals<const ESP: bool>(pub String);

impl<'de, const ESP: bool> Deserialize<'de> for Proposals<ESP> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let kind = if ESP { wasmsec_ike::proposal::Kind::Esp } else { wasmsec_ike::proposal::Kind::Ike };
        wasmsec_ike::proposal::parse(&s, kind).map_err(serde::de::Error::custom)?;
        Ok(Proposals(s))
    }
}

/// An IKE identity in strongSwan's syntax, checked when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub String);

impl Identity {
    pub fn any() -> Identity {
        Identity("%any".into())
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        wasmsec_ike::identity::Identity::parse(&s).map_err(serde::de::Error::custom)?;
        Ok(Identity(s))
    }
}

/// `source` of `[tunnel]` or a `[[tenant]]`: the source address set on the
/// routes into the tunnel, for what the gateway itself sends there. One
/// address, or a list with at most one of each family (a dual-stack site's
/// IPv4 and IPv6 LAN addresses): a route gets the one of its own family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
}

impl Sources {
    /// The source for routes to `addr`'s family, if one is set.
    pub fn of_family(&self, addr: &IpAddr) -> Option<IpAddr> {
        if addr.is_ipv4() { self.v4 } else { self.v6 }
    }

    /// Take `a` as the source of its family; a second of one family is an
    /// error.
    fn add(&mut self, a: IpAddr) -> Result<(), String> {
        let slot = if a.is_ipv4() { &mut self.v4 } else { &mut self.v6 };
        match slot.replace(a) {
            Some(b) => Err(format!("source: {b} and {a} are of one family (at most one IPv4 and one IPv6 address)")),
            None => Ok(()),
        }
    }
}

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let list = match Raw::deserialize(d)? {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        };
        let mut out = Sources::default();
        for s in list {
            let a: IpAddr =
                s.trim().parse().map_err(|_| serde::de::Error::custom(format!("source {s:?} is not an address")))?;
            out.add(a).map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

/// An SPI written as a number or a hex string ("0x1001").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spi(pub u32);

impl<'de> Deserialize<'de> for Spi {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => {
                let t = s.trim();
                let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(h) => u32::from_str_radix(h, 16),
                    None => t.parse(),
                };
                r.map_err(|_| serde::de::Error::custom(format!("SPI {s:?} is not a 32-bit number")))?
            }
        };
        if v <= 255 {
            return Err(serde::de::Error::custom(format!(
                "SPI {v} is reserved (RFC 4303: 1-255 are IANA-reserved, 0 is invalid)"
            )));
        }
        Ok(Spi(v))
    }
}

/// Pre-shared keys read for one pass over the config (a start or a
/// reload), each source once: a PoP's thousands of connections often share
/// one key file, and each read is a stat, an open and a read. Dropped,
/// and so wiped, when the pass is done; a file changed meanwhile is read
/// at the next pass.
#[derive(Default)]
pub struct SecretReads(std::collections::HashMap<KeySource, Result<Zeroizing<Vec<u8>>, String>>);

/// Where a key comes from. Keys are never written in the config itself.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "file:{}", p.display()),
            KeySource::Env(n) => write!(f, "env:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(p) = s.strip_prefix("file:") {
            Ok(KeySource::File(PathBuf::from(p)))
        } else if let Some(n) = s.strip_prefix("env:") {
            Ok(KeySource::Env(n.to_string()))
        } else {
            // Do not echo the value: it may be a key pasted inline.
            Err(serde::de::Error::custom(
                "a key must be given as \"file:PATH\" or \"env:NAME\" (keys are never written inline)",
            ))
        }
    }
}

impl KeySource {
    /// The text of the key file or variable (relative files against `base`).
    fn text(&self, base: &Path) -> Result<Zeroizing<String>, String> {
        Ok(Zeroizing::new(match self {
            KeySource::File(p) => {
                let p = if p.is_relative() { base.join(p) } else { p.clone() };
                let meta = std::fs::metadata(&p).map_err(|e| format!("cannot read key file {}: {e}", p.display()))?;
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
                // As ssh does with private keys: a secret others can read is
                // no longer a secret; say so instead of using it.
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "key file {} is accessible by group or others (mode {:o}): run chmod 600 on it",
                        p.display(),
                        mode & 0o777
                    ));
                }
                std::fs::read_to_string(&p).map_err(|e| format!("cannot read key file {}: {e}", p.display()))?
            }
            KeySource::Env(n) => std::env::var(n).map_err(|_| format!("environment variable {n} is not set"))?,
        }))
    }

    /// Read a pre-shared key: the text itself, or hex after `0x`.
    pub fn load_secret(&self, base: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
        let text = self.text(base)?;
        let t = text.trim_end_matches(['\n', '\r']);
        if t.starts_with("0x") {
            return self.load(base);
        }
        if t.is_empty() {
            return Err(format!("pre-shared key from {self:?} is empty"));
        }
        Ok(Zeroizing::new(t.as_bytes().to_vec()))
    }

    /// Read a pre-shared key through `reads`, which reads each source once.
    pub fn load_secret_via(&self, base: &Path, reads: &mut SecretReads) -> Result<Zeroizing<Vec<u8>>, String> {
        reads.0.entry(self.clone()).or_insert_with(|| self.load_secret(base)).clone()
    }

    /// Read a bearer token: the text, without its line end; never empty.
    pub fn load_token(&self, base: &Path) -> Result<Zeroizing<String>, String> {
        let text = self.text(base)?;
        let t = text.trim_end_matches(['\n', '\r']);
        if t.len() < 16 {
            return Err(format!("token from {self:?} is shorter than 16 characters"));
        }
        Ok(Zeroizing::new(t.to_string()))
    }

    /// Read the hex key. Relative files are resolved against `base`.
    pub fn load(&self, base: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
        let text = self.text(base)?;
        let hex: Zeroizing<String> = Zeroizing::new(text.chars().filter(|c| !c.is_whitespace() && *c != ':').collect());
        let hex = hex.strip_prefix("0x").unwrap_or(&hex);
        // Checked first: the pairs below are byte slices, and a character
        // of several bytes would split between two of them (a panic).
        if !hex.is_ascii() {
            return Err(format!("key from {self:?} is not hex"));
        }
        if !hex.len().is_multiple_of(2) {
            return Err(format!("key from {self:?} is not an even number of hex digits"));
        }
        let mut out = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
        for i in (0..hex.len()).step_by(2) {
            let b = u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("key from {self:?} is not hex"))?;
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_and_become_selectors() {
        let p = Prefix::parse("198.18.1.0/24").unwrap();
        assert!(p.contains(&"198.18.1.77".parse().unwrap()));
        assert!(!p.contains(&"198.18.2.1".parse().unwrap()));
        assert!(!p.contains(&"::1".parse().unwrap()));
        let ts = p.selector();
        assert_eq!(
            (ts.start_address.as_slice(), ts.end_address.as_slice()),
            (&[198, 18, 1, 0][..], &[198, 18, 1, 255][..])
        );
        assert_eq!(show_ts(&ts), "198.18.1.0/24");
        assert_eq!(Prefix::parse("0.0.0.0/0").unwrap().selector().end_address, vec![255; 4]);
    }

    #[test]
    fn key_file_is_hex_decoded_relative_to_config() {
        let dir = std::env::temp_dir().join(format!("wasmsec-cfg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "0x00 11:22 ff\n").unwrap();
        let private = |p: &Path, mode| std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode));
        private(&dir.join("k"), 0o644).unwrap();
        let e = KeySource::File("k".into()).load(&dir).unwrap_err();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        private(&dir.join("k"), 0o600).unwrap();
        let k = KeySource::File("k".into()).load(&dir).unwrap();
        assert_eq!(&k[..], &[0x00, 0x11, 0x22, 0xff]);
        std::fs::write(dir.join("k"), "0g").unwrap();
        assert!(KeySource::File("k".into()).load(&dir).unwrap_err().contains("not hex"));
        // A character of two bytes at an odd offset: refused, no panic on
        // a slice through its middle.
        std::fs::write(dir.join("k"), "0xa\u{e9}1").unwrap();
        assert!(KeySource::File("k".into()).load(&dir).unwrap_err().contains("not hex"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
