//! The configuration file (TOML), read once into typed values
//! ([`values`]): unknown keys and bad values are errors that name the file,
//! the line and the key.
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
pub mod sections;
pub mod tenant;
pub mod values;

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

pub use sections::{
    Child, Connection, Control, CopyDscp, DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, DpdAction, Encapsulation, Ike,
    Manual, Network, Policy, RawEspSend, Runtime, StartAction, Tunnel,
};
pub use tenant::Tenant;
pub use values::{Identity, KeySource, Prefix, Proposals, SecretReads, Sources, Spi, show_ts};

/// A whole config file, parsed and checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[tunnel]`: the TUN device.
    #[serde(default)]
    pub tunnel: Tunnel,
    /// `[network]`: the sockets.
    #[serde(default)]
    pub network: Network,
    /// `[runtime]`: where the components are, and the batch size.
    #[serde(default)]
    pub runtime: Runtime,
    /// `[[manual]]`: manually keyed tunnels.
    #[serde(default)]
    pub manual: Vec<Manual>,
    /// `[control]`: the admin socket.
    #[serde(default)]
    pub control: Control,
    /// `[ike]`: IKE daemon settings.
    #[serde(default)]
    pub ike: Ike,
    /// `[policy]`: the policy module.
    #[serde(default)]
    pub policy: Policy,
    /// `[[tenant]]`: tenants, each in its own routing domain.
    #[serde(default)]
    pub tenant: Vec<Tenant>,
    /// IKEv2 connections (swanctl.conf's `connections`).
    #[serde(default)]
    pub connection: Vec<Connection>,
}

/// A configuration error, naming the file (and the line, where it can).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {msg}")]
pub struct ConfigError {
    /// The config file's path.
    pub file: String,
    /// What is wrong, after "line N: " where the line is known.
    pub msg: String,
}

/// "line N: " for a byte offset into the file's text.
fn line_of(text: &str, at: usize) -> String {
    format!("line {}: ", text[..at.min(text.len())].matches('\n').count() + 1)
}

/// A check across values: its message and where in the file it applies.
struct Problem {
    at: Option<usize>,
    msg: String,
}

fn problem<T>(at: &Spanned<T>, msg: String) -> Problem {
    Problem { at: Some(at.span().start), msg }
}

/// The largest anti-replay window the ESP engine keeps, in packets
/// (`wasmsec_esp::replay::MAX_WINDOW`).
pub const MAX_REPLAY_WINDOW: u32 = 1 << 16;

/// The anti-replay window of a manual tunnel or a child that names none,
/// in packets: room for the reordering of a multi-gigabit path.
pub const DEFAULT_REPLAY_WINDOW: u32 = 1024;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { file: path.display().to_string(), msg: e.to_string() })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |at: Option<usize>, msg: String| ConfigError {
            file: file.to_string(),
            msg: format!("{}{msg}", at.map(|a| line_of(text, a)).unwrap_or_default()),
        };
        let c: Config = toml::from_str(text).map_err(|e| err(e.span().map(|s| s.start), e.message().to_string()))?;
        c.validate().map_err(|p| err(p.at, p.msg))?;
        Ok(c)
    }

    /// What a single value cannot say about itself.
    fn validate(&self) -> Result<(), Problem> {
        let whole = |msg: String| Problem { at: None, msg };
        if self.tunnel.name.is_empty() || self.tunnel.name.len() > 15 {
            return Err(whole(format!("tunnel.name {:?} must be 1-15 bytes", self.tunnel.name)));
        }
        if !(576..=9000).contains(&self.tunnel.mtu) {
            return Err(whole(format!("tunnel.mtu {} must be 576-9000", self.tunnel.mtu)));
        }
        if !(1..=256).contains(&self.runtime.batch) {
            return Err(whole(format!("runtime.batch {} must be 1-256", self.runtime.batch)));
        }
        let mut names = HashSet::new();
        let mut spis = HashSet::new();
        for m in &self.manual {
            let at = format!("manual {:?}", m.name.get_ref());
            if !names.insert(m.name.get_ref()) {
                return Err(problem(&m.name, format!("{at}: name used twice")));
            }
            if !spis.insert(("in", m.in_spi)) {
                return Err(problem(&m.name, format!("{at}: in_spi {:#x} used by two tunnels", m.in_spi.0)));
            }
            if !spis.insert(("out", m.out_spi)) {
                return Err(problem(&m.name, format!("{at}: out_spi {:#x} used by two tunnels", m.out_spi.0)));
            }
            // Refused, not quietly cut to what the ESP engine holds.
            if m.replay_window > MAX_REPLAY_WINDOW {
                let msg = format!("{at}: replay_window {} is more than {MAX_REPLAY_WINDOW} packets", m.replay_window);
                return Err(problem(&m.name, msg));
            }
        }
        self.validate_tenants()?;
        // The IKE engine picks its inbound SPIs in IKE_SPI_BITS's range and
        // does not know the manual tunnels' (RFC 4301 section 4.1: one SPI,
        // one inbound SA); a collision would refuse that CHILD SA in the
        // data path and renegotiate it, so the config keeps them apart.
        let ike = wasmsec_wire::esp::IKE_SPI_BITS;
        if let Some(m) = self.manual.iter().find(|m| !self.connection.is_empty() && m.in_spi.0 & ike == ike) {
            let msg = format!(
                "manual {:?}: in_spi {:#x} is in {ike:#x}-0xffffffff, where the IKE engine picks the inbound SPIs of \
                 its CHILD SAs; with [[connection]]s in the same config a manual tunnel's in_spi must be below {ike:#x}",
                m.name.get_ref(),
                m.in_spi.0
            );
            return Err(problem(&m.name, msg));
        }
        let mut conn_names = HashSet::new();
        for c in &self.connection {
            let at = format!("connection {:?}", c.name.get_ref());
            if !conn_names.insert(c.name.get_ref()) {
                return Err(problem(&c.name, format!("{at}: name used twice")));
            }
            if let Some(t) = &c.tenant
                && self.tenant_index(t).is_none()
            {
                return Err(problem(&c.name, format!("{at}: tenant {t:?} is not a configured [[tenant]]")));
            }
            if c.start_action != StartAction::None && c.remote_addrs.is_empty() {
                let msg = format!("{at}: start_action {:?} needs a remote address to initiate to", c.start_action);
                return Err(problem(&c.name, msg));
            }
            if c.children.is_empty() {
                return Err(problem(&c.name, format!("{at}: needs at least one [[connection.children]]")));
            }
            // A child's name is what its CHILD SAs are held to (their
            // selectors, proposals and lifetimes) and what logs show.
            let mut child_names = HashSet::new();
            if let Some(ch) = c.children.iter().find(|ch| !child_names.insert(ch.name.as_str())) {
                return Err(problem(&c.name, format!("{at}: child name {:?} used twice", ch.name)));
            }
            if let Some(ch) = c.children.iter().find(|ch| ch.replay_window > MAX_REPLAY_WINDOW) {
                let (name, w) = (&ch.name, ch.replay_window);
                let msg = format!("{at}: child {name:?}: replay_window {w} is more than {MAX_REPLAY_WINDOW} packets");
                return Err(problem(&c.name, msg));
            }
        }
        Ok(())
    }

    fn validate_tenants(&self) -> Result<(), Problem> {
        if self.tenant.len() > tenant::MAX_TENANTS {
            let msg = format!(
                "{} [[tenant]] sections: at most {} (each holds two ESP guest instances of a pool sized for that many)",
                self.tenant.len(),
                tenant::MAX_TENANTS
            );
            return Err(Problem { at: None, msg });
        }
        let mut names = HashSet::new();
        let mut tuns = HashSet::from([self.tunnel.name.clone()]);
        for t in &self.tenant {
            let name = t.name.get_ref();
            if let Some(msg) = tenant::bad_name(name) {
                return Err(problem(&t.name, msg));
            }
            let at = format!("tenant {name:?}");
            if !names.insert(name) {
                return Err(problem(&t.name, format!("{at}: name used twice")));
            }
            let tun = t.tun_name();
            if tun.is_empty() || tun.len() > 15 || tun.contains(['/', ' ']) {
                return Err(problem(&t.name, format!("{at}: tun {tun:?} must be 1-15 bytes, no '/' or space")));
            }
            if !tuns.insert(tun.clone()) {
                return Err(problem(
                    &t.name,
                    format!("{at}: TUN device {tun:?} is already used by [tunnel] or another tenant"),
                ));
            }
            if t.netns.is_empty() || t.netns.contains('/') || t.netns.starts_with('.') {
                return Err(problem(&t.name, format!("{at}: netns {:?} must be a name `ip netns` knows", t.netns)));
            }
            if let Some(m) = t.mtu
                && !(576..=9000).contains(&m)
            {
                return Err(problem(&t.name, format!("{at}: mtu {m} must be 576-9000")));
            }
        }
        Ok(())
    }

    /// The index of tenant `name` among `[[tenant]]`.
    pub fn tenant_index(&self, name: &str) -> Option<usize> {
        self.tenant.iter().position(|t| t.name.get_ref() == name)
    }

    /// The routing domain of a connection: 0 for the daemon's own
    /// namespace, 1 + its tenant's index for a tenant's.
    pub fn domain_of(&self, c: &Connection) -> usize {
        c.tenant.as_deref().and_then(|t| self.tenant_index(t)).map_or(0, |i| i + 1)
    }
}

#[cfg(test)]
mod tests;
