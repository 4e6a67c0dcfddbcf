//! The configuration file (TOML). Unknown keys are errors; every error
//! names the file, and where it can, the line and the key.
//!
//! ```toml
//! [tunnel]
//! name = "wsec0"            # TUN device
//! mtu = 1400
//!
//! [network]
//! listen = "198.18.0.2"     # local address for UDP 4500 (and raw ESP)
//!
//! [[manual]]                # one static (manually keyed) tunnel
//! name = "to-gwa"
//! remote_address = "198.18.0.1"
//! encapsulation = "udp"     # or "none": raw ESP, IP protocol 50
//! algorithm = "aes256gcm16"
//! local_ts = ["198.18.2.0/24"]
//! remote_ts = ["198.18.1.0/24"]
//! out_spi = "0xc0000001"
//! out_key = "file:/etc/wasmsec/to-gwa.out.key"
//! in_spi = "0xc0000002"
//! in_key = "env:WASMSEC_TO_GWA_IN_KEY"
//! ```
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::keystore::EspAlgorithm;
use wasmsec_wire::ip::Address;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub tunnel: Tunnel,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub manual: Vec<Manual>,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub ike: Ike,
    /// IKEv2 connections (swanctl.conf's `connections`).
    #[serde(default)]
    pub connection: Vec<IkeConnection>,
}

/// The local admin socket (`wasmsec ctl`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Unix socket path; none by default.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// IKE daemon settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ike {
    /// Append every IKE SA's keys to this file as Wireshark
    /// `ikev2_decryption_table` lines. This discloses secrets: debugging only.
    #[serde(default)]
    pub keylog: Option<PathBuf>,
    /// Append every CHILD SA's keys (both directions) to this file as
    /// Wireshark `esp_sa` lines. This discloses secrets: debugging only.
    #[serde(default)]
    pub esp_keylog: Option<PathBuf>,
}

/// When a connection comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAction {
    /// Wait for the peer or `wasmsec ctl initiate`.
    #[default]
    None,
    /// Initiate when the daemon starts.
    Start,
    /// Initiate when traffic for the connection's selectors arrives.
    Trap,
}

/// An IKEv2 connection with pre-shared-key authentication.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IkeConnection {
    pub name: String,
    /// Our addresses (default: any).
    #[serde(default)]
    pub local_addrs: Vec<IpAddr>,
    /// The peer's addresses; empty or `%any` means any (responder only).
    #[serde(default)]
    pub remote_addrs: Vec<String>,
    /// Our identity, strongSwan syntax (`gw.example.com`, `user@example.com`,
    /// an address, `keyid:#hex`, `keyid:text`, `C=.., O=.., CN=..`).
    pub local_id: String,
    /// The identity we require of the peer (default `%any`).
    #[serde(default = "default_any")]
    pub remote_id: String,
    /// The pre-shared key: `file:PATH` or `env:NAME`; the text is the key
    /// (a `0x` prefix means hex).
    pub psk: KeySource,
    /// IKE proposals, strongSwan syntax.
    #[serde(default = "default_ike_proposals")]
    pub proposals: String,
    #[serde(default)]
    pub start_action: StartAction,
    /// Always encapsulate ESP in UDP, NAT or not.
    #[serde(default)]
    pub encap: bool,
    /// Seconds between NAT keepalives when we are behind a NAT (0: off).
    #[serde(default = "default_keepalive")]
    pub keepalive: u32,
    /// Seconds without hearing from the peer before a liveness check (0: off).
    #[serde(default)]
    pub dpd_delay: u32,
    /// What to do when the peer is found dead.
    #[serde(default)]
    pub dpd_action: DpdAction,
    /// Seconds after which we rekey the IKE SA (0: only answer the peer's rekeys).
    #[serde(default = "default_ike_rekey_time")]
    pub rekey_time: u32,
    /// Seconds after which we reauthenticate: a new IKE SA from scratch, new
    /// CHILD SAs, then the old IKE SA is deleted (0: never).
    #[serde(default)]
    pub reauth_time: u32,
    pub children: Vec<IkeChild>,
}

/// A CHILD SA of a connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IkeChild {
    pub name: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    /// ESP proposals, strongSwan syntax.
    #[serde(default = "default_esp_proposals")]
    pub esp_proposals: String,
    /// Seconds after which we rekey the CHILD SA (0: only answer the peer's rekeys).
    #[serde(default = "default_child_rekey_time")]
    pub rekey_time: u32,
    /// Rekey after this many bytes / packets through either SA of the pair (0: no limit).
    #[serde(default)]
    pub rekey_bytes: u64,
    #[serde(default)]
    pub rekey_packets: u64,
    /// Hard lifetimes: delete (and create anew) a CHILD SA that no rekey
    /// replaced by then (0: 110 % of the matching rekey limit; by time at
    /// least the retransmission span, about 63 s, above `rekey_time`).
    #[serde(default)]
    pub life_time: u32,
    #[serde(default)]
    pub life_bytes: u64,
    #[serde(default)]
    pub life_packets: u64,
}

/// What dead peer detection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DpdAction {
    /// Delete the SAs (routes stay, so traffic is dropped, not leaked).
    #[default]
    Clear,
    /// Delete the SAs and initiate again.
    Restart,
    /// Delete the SAs and initiate again when traffic for the connection
    /// arrives (as `start_action = "trap"`).
    Hold,
}

/// strongSwan's defaults: IKE SAs rekeyed every 4 hours, CHILD SAs hourly.
fn default_ike_rekey_time() -> u32 {
    4 * 3600
}

fn default_child_rekey_time() -> u32 {
    3600
}

fn default_keepalive() -> u32 {
    20
}

fn default_any() -> String {
    "%any".into()
}

pub const DEFAULT_IKE_PROPOSALS: &str = "aes256gcm16-prfsha256-x25519-ecp256,aes128gcm16-prfsha256-x25519-ecp256";
pub const DEFAULT_ESP_PROPOSALS: &str = "aes256gcm16,aes128gcm16,chacha20poly1305";

fn default_ike_proposals() -> String {
    DEFAULT_IKE_PROPOSALS.into()
}

fn default_esp_proposals() -> String {
    DEFAULT_ESP_PROPOSALS.into()
}

impl IkeConnection {
    /// The peer addresses, `%any` removed.
    pub fn remote_addrs(&self) -> Result<Vec<IpAddr>, String> {
        self.remote_addrs
            .iter()
            .filter(|a| a.as_str() != "%any")
            .map(|a| a.parse().map_err(|_| format!("remote_addrs: {a:?} is not an address or %any")))
            .collect()
    }
}

/// The TUN device that carries inner (cleartext) traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    /// Interface name, at most 15 bytes.
    #[serde(default = "default_tun_name")]
    pub name: String,
    /// MTU of the TUN device: the path MTU minus ESP-in-UDP overhead
    /// (about 20 IP + 8 UDP + 8 ESP + 8 IV + 2-5 trailer + 16 ICV = 65 bytes).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Source address for packets the gateway itself sends into the
    /// tunnel (set on the routes); usually the gateway's LAN address.
    #[serde(default)]
    pub source: Option<IpAddr>,
}

impl Default for Tunnel {
    fn default() -> Self {
        Tunnel { name: default_tun_name(), mtu: default_mtu(), source: None }
    }
}

fn default_tun_name() -> String {
    "wsec0".into()
}

fn default_mtu() -> u16 {
    1400
}

/// Sockets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Local IPv4 address to bind (default: all).
    #[serde(default = "default_listen")]
    pub listen: Ipv4Addr,
    /// UDP port for ESP-in-UDP and IKE with the non-ESP marker (RFC 3948).
    #[serde(default = "default_nat_port")]
    pub nat_t_port: u16,
    /// UDP port for IKE (RFC 7296 section 2).
    #[serde(default = "default_ike_port")]
    pub ike_port: u16,
    /// Also receive raw ESP (IP protocol 50). Opened automatically when a
    /// tunnel uses `encapsulation = "none"`.
    #[serde(default)]
    pub raw_esp: bool,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            listen: default_listen(),
            nat_t_port: default_nat_port(),
            ike_port: default_ike_port(),
            raw_esp: false,
        }
    }
}

fn default_listen() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}

fn default_nat_port() -> u16 {
    4500
}

fn default_ike_port() -> u16 {
    500
}

/// Where the wasm components are and how much a batch may hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Directory holding `esp.wasm` (default: `$WASMSEC_COMPONENTS`, else
    /// `../components` next to the binary, else `/usr/lib/wasmsec/components`).
    #[serde(default)]
    pub components: Option<PathBuf>,
    /// Packets per call into the ESP component (1-256).
    #[serde(default = "default_batch")]
    pub batch: usize,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime { components: None, batch: default_batch() }
    }
}

fn default_batch() -> usize {
    64
}

/// How ESP travels to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encapsulation {
    /// ESP in UDP (RFC 3948) to the peer's port 4500.
    Udp,
    /// Raw ESP, IP protocol 50.
    None,
}

/// A manually keyed tunnel: one outbound and one inbound SA.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manual {
    pub name: String,
    pub remote_address: Ipv4Addr,
    #[serde(default = "default_nat_port")]
    pub remote_port: u16,
    #[serde(default = "default_encap")]
    pub encapsulation: Encapsulation,
    /// ESP transform: aes128gcm16, aes256gcm16 or chacha20poly1305.
    #[serde(default = "default_alg")]
    pub algorithm: String,
    /// Extended sequence numbers (RFC 4303 section 2.2.1); both ends must agree.
    #[serde(default)]
    pub esn: bool,
    /// Anti-replay window in packets (0 turns replay protection off).
    #[serde(default = "default_window")]
    pub replay_window: u32,
    /// Local and remote subnets (CIDR) the tunnel carries.
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub out_spi: Spi,
    /// `file:PATH` or `env:NAME`, holding the key and salt in hex.
    pub out_key: KeySource,
    pub in_spi: Spi,
    pub in_key: KeySource,
}

fn default_encap() -> Encapsulation {
    Encapsulation::Udp
}

fn default_alg() -> String {
    "aes256gcm16".into()
}

fn default_window() -> u32 {
    1024
}

/// An SPI written as a number or a hex string ("0x1001").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spi(pub u32);

impl<'de> Deserialize<'de> for Spi {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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

/// Where a key comes from. Keys are never written in the config itself.
#[derive(Clone, PartialEq, Eq)]
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
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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
    /// Read a pre-shared key: the text itself, or hex after `0x`.
    pub fn load_secret(&self, base: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
        let text = Zeroizing::new(match self {
            KeySource::File(p) => {
                let p = if p.is_relative() { base.join(p) } else { p.clone() };
                std::fs::read_to_string(&p).map_err(|e| format!("cannot read key file {}: {e}", p.display()))?
            }
            KeySource::Env(n) => std::env::var(n).map_err(|_| format!("environment variable {n} is not set"))?,
        });
        let t = text.trim_end_matches(['\n', '\r']);
        if t.starts_with("0x") {
            return self.load(base);
        }
        if t.is_empty() {
            return Err(format!("pre-shared key from {self:?} is empty"));
        }
        Ok(Zeroizing::new(t.as_bytes().to_vec()))
    }

    /// Read the hex key. Relative files are resolved against `base`.
    pub fn load(&self, base: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
        let text = Zeroizing::new(match self {
            KeySource::File(p) => {
                let p = if p.is_relative() { base.join(p) } else { p.clone() };
                std::fs::read_to_string(&p).map_err(|e| format!("cannot read key file {}: {e}", p.display()))?
            }
            KeySource::Env(n) => std::env::var(n).map_err(|_| format!("environment variable {n} is not set"))?,
        });
        let hex: Zeroizing<String> = Zeroizing::new(text.chars().filter(|c| !c.is_whitespace() && *c != ':').collect());
        let hex = hex.strip_prefix("0x").unwrap_or(&hex);
        if hex.len() % 2 != 0 {
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

/// A CIDR prefix, e.g. `198.18.1.0/24` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
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

    pub fn address(&self) -> Address {
        match self.addr {
            IpAddr::V4(a) => Address::V4(a.octets()),
            IpAddr::V6(a) => Address::V6(a.octets()),
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A configuration error, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {msg}")]
pub struct ConfigError {
    pub file: String,
    pub msg: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { file: path.display().to_string(), msg: e.to_string() })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |msg: String| ConfigError { file: file.to_string(), msg };
        let c: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            err(format!("{at}{}", e.message()))
        })?;
        c.validate().map_err(err)?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        if self.tunnel.name.is_empty() || self.tunnel.name.len() > 15 {
            return Err(format!("tunnel.name {:?} must be 1-15 bytes", self.tunnel.name));
        }
        if !(576..=9000).contains(&self.tunnel.mtu) {
            return Err(format!("tunnel.mtu {} must be 576-9000", self.tunnel.mtu));
        }
        if !(1..=256).contains(&self.runtime.batch) {
            return Err(format!("runtime.batch {} must be 1-256", self.runtime.batch));
        }
        let mut names = std::collections::HashSet::new();
        let mut spis = std::collections::HashSet::new();
        for m in &self.manual {
            let at = format!("manual {:?}", m.name);
            if !names.insert(&m.name) {
                return Err(format!("{at}: name used twice"));
            }
            if EspAlgorithm::from_name(&m.algorithm).is_none() {
                return Err(format!(
                    "{at}: algorithm {:?} is not supported (aes128gcm16, aes256gcm16, chacha20poly1305, aes128|aes256-sha256|sha384|sha512)",
                    m.algorithm
                ));
            }
            for (k, v) in [("local_ts", &m.local_ts), ("remote_ts", &m.remote_ts)] {
                if v.is_empty() {
                    return Err(format!("{at}: {k} must list at least one subnet"));
                }
                for s in v {
                    Prefix::parse(s).map_err(|e| format!("{at}: {k}: {e}"))?;
                }
            }
            if !spis.insert(("in", m.in_spi)) {
                return Err(format!("{at}: in_spi {:#x} used by two tunnels", m.in_spi.0));
            }
            if !spis.insert(("out", m.out_spi)) {
                return Err(format!("{at}: out_spi {:#x} used by two tunnels", m.out_spi.0));
            }
        }
        let mut conn_names = std::collections::HashSet::new();
        for c in &self.connection {
            let at = format!("connection {:?}", c.name);
            if !conn_names.insert(&c.name) {
                return Err(format!("{at}: name used twice"));
            }
            c.remote_addrs().map_err(|e| format!("{at}: {e}"))?;
            if c.start_action != StartAction::None && c.remote_addrs().map_or(true, |v| v.is_empty()) {
                return Err(format!("{at}: start_action {:?} needs a remote address to initiate to", c.start_action));
            }
            wasmsec_ike::proposal::parse(&c.proposals, wasmsec_ike::proposal::Kind::Ike)
                .map_err(|e| format!("{at}: proposals: {e}"))?;
            wasmsec_ike::identity::Identity::parse(&c.local_id).map_err(|e| format!("{at}: local_id: {e}"))?;
            wasmsec_ike::identity::Identity::parse(&c.remote_id).map_err(|e| format!("{at}: remote_id: {e}"))?;
            if c.children.is_empty() {
                return Err(format!("{at}: needs at least one [[connection.children]]"));
            }
            for ch in &c.children {
                let at = format!("{at} child {:?}", ch.name);
                wasmsec_ike::proposal::parse(&ch.esp_proposals, wasmsec_ike::proposal::Kind::Esp)
                    .map_err(|e| format!("{at}: esp_proposals: {e}"))?;
                for (k, v) in [("local_ts", &ch.local_ts), ("remote_ts", &ch.remote_ts)] {
                    if v.is_empty() {
                        return Err(format!("{at}: {k} must list at least one subnet"));
                    }
                    for t in v {
                        Prefix::parse(t).map_err(|e| format!("{at}: {k}: {e}"))?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[tunnel]
name = "wsec0"
[[manual]]
name = "t"
remote_address = "198.18.0.1"
local_ts = ["198.18.2.0/24"]
remote_ts = ["198.18.1.0/24"]
out_spi = "0x1001"
out_key = "env:K1"
in_spi = 4098
in_key = "file:k2"
"#;

    const IKE: &str = r#"
[[connection]]
name = "s2s"
local_addrs = ["198.18.0.2"]
remote_addrs = ["198.18.0.1"]
local_id = "gwb.interop.test"
remote_id = "gwa.interop.test"
psk = "env:PSK"
start_action = "start"
[[connection.children]]
name = "net"
local_ts = ["198.18.2.0/24"]
remote_ts = ["198.18.1.0/24"]
"#;

    #[test]
    fn ike_connection_parses_and_validates() {
        let c = Config::parse(IKE, "i.toml").unwrap();
        assert_eq!(c.connection[0].proposals, DEFAULT_IKE_PROPOSALS);
        assert_eq!(c.connection[0].start_action, StartAction::Start);
        for (from, to, want) in [
            ("remote_addrs = [\"198.18.0.1\"]", "remote_addrs = [\"%any\"]", "needs a remote address"),
            (
                "local_id = \"gwb.interop.test\"",
                "local_id = \"gwb\"\nproposals = \"aes256gcm16-bogus\"",
                "unknown algorithm",
            ),
            ("name = \"net\"", "name = \"net\"\nesp_proposals = \"aes256-sha1\"", "no usable proposal"),
            ("local_ts = [\"198.18.2.0/24\"]", "local_ts = []", "at least one subnet"),
        ] {
            let e = Config::parse(&IKE.replace(from, to), "i.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.tunnel.mtu, 1400);
        assert_eq!(c.manual[0].out_spi, Spi(0x1001));
        assert_eq!(c.manual[0].in_spi, Spi(4098));
        assert_eq!(c.manual[0].encapsulation, Encapsulation::Udp);
        assert_eq!(c.manual[0].in_key, KeySource::File("k2".into()));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = Config::parse(&GOOD.replace("name = \"t\"", "name = \"t\"\nbogus = 1"), "gw.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("gw.toml: line "), "{s}");
        assert!(s.contains("bogus"), "{s}");
    }

    #[test]
    fn inline_keys_are_refused_without_echo() {
        let e = Config::parse(&GOOD.replace("env:K1", "00112233445566778899"), "gw.toml").unwrap_err();
        assert!(e.to_string().contains("file:PATH"));
        assert!(!e.to_string().contains("00112233"));
    }

    #[test]
    fn bad_values_are_explained() {
        for (from, to, want) in [
            ("0x1001", "0x10", "reserved"),
            ("198.18.2.0/24", "198.18.2.0/33", "bad prefix length"),
            ("in_spi = 4098", "in_spi = 4098\nalgorithm = \"des\"", "not supported"),
        ] {
            let e = Config::parse(&GOOD.replace(from, to), "x.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn key_file_is_hex_decoded_relative_to_config() {
        let dir = std::env::temp_dir().join(format!("wasmsec-cfg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "0x00 11:22 ff\n").unwrap();
        let k = KeySource::File("k".into()).load(&dir).unwrap();
        assert_eq!(&k[..], &[0x00, 0x11, 0x22, 0xff]);
        std::fs::write(dir.join("k"), "0g").unwrap();
        assert!(KeySource::File("k".into()).load(&dir).unwrap_err().contains("not hex"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(KeySource::Env("WASMSEC_TEST_KEY_MISSING".into()).load(Path::new(".")).is_err());
    }
}
