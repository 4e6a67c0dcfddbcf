//! What the host configures: connections and their CHILD SAs (as in
//! swanctl.conf), and the engine's timing. [`Connection`] is a connection
//! as the engine keeps it: proposals, identities and selectors parsed once.
use std::net::IpAddr;

use wasmsec_wire::ike::TrafficSelector as Ts;

use crate::crypto::Handle;
use crate::error::Error;
use crate::identity::Identity;
use crate::proposal::{self, Kind};
use crate::ts;

/// What to do when a connection is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAction {
    /// Wait for the peer or an admin command.
    #[default]
    None,
    /// Initiate at once.
    Start,
}

/// What to do when dead peer detection finds the peer gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpdAction {
    /// Delete the SAs and wait.
    #[default]
    Clear,
    /// Delete the SAs and initiate again.
    Restart,
}

/// A CHILD SA's configuration.
#[derive(Debug, Clone, Default)]
pub struct ChildConfig {
    /// Its name in the config and the logs.
    pub name: String,
    /// Our side's selectors as configured ("10.0.1.0/24"), proposed as TSi/TSr.
    pub local_ts: Vec<String>,
    /// The peer's side's.
    pub remote_ts: Vec<String>,
    /// ESP proposals, strongSwan's syntax ("aes256gcm16-x25519"; a DH group
    /// asks for PFS in CREATE_CHILD_SA).
    pub esp_proposals: String,
    /// Rekey the CHILD SA this long after it was created (RFC 7296 section
    /// 1.3.3); 0: never initiate a rekey (the peer's rekeys are answered).
    pub rekey_time_ms: u64,
    /// Rekey once either SA of the pair carried this many bytes or
    /// packets; 0: no such limit.
    pub rekey_bytes: u64,
    /// The same in packets.
    pub rekey_packets: u64,
    /// Hard limits: the CHILD SA is deleted (and created anew) when one is
    /// reached before the rekey replaced it; 0: 110 % of the matching
    /// rekey limit (by time at least the retransmission span above it), or
    /// none without one.
    pub life_time_ms: u64,
    /// Hard limit in bytes (0: as above).
    pub life_bytes: u64,
    /// Hard limit in packets (0: as above).
    pub life_packets: u64,
}

/// A connection as the host's config describes it (swanctl.conf-like).
/// `Default` is everything off and empty: a base for tests and tools, not
/// a connection that loads (it names no identity and no CHILD SA).
#[derive(Debug, Clone, Default)]
pub struct ConnectionConfig {
    pub name: String,
    /// Our addresses (empty: any).
    pub local_addrs: Vec<IpAddr>,
    /// The peer's addresses (empty: any; then we cannot initiate).
    pub remote_addrs: Vec<IpAddr>,
    /// Our IKE identity (IDi/IDr, section 3.5), e.g. "gw-a.example".
    pub local_id: String,
    /// The identity the peer must present.
    pub remote_id: String,
    /// The pre-shared key's handle in the host keystore.
    pub psk: Handle,
    /// IKE proposals, strongSwan's syntax ("aes256gcm16-prfsha256-x25519").
    pub ike_proposals: String,
    /// Its CHILD SAs.
    pub children: Vec<ChildConfig>,
    /// What happens at start (initiate, trap, or wait for the peer).
    pub start_action: StartAction,
    /// Always use UDP encapsulation for ESP, NAT or not.
    pub force_encap: bool,
    /// NAT keepalive interval when we are behind a NAT (RFC 3948 section
    /// 2.3); 0 turns keepalives off.
    pub keepalive_ms: u64,
    /// Liveness check after this long without hearing from the peer
    /// (section 2.4); 0 turns it off.
    pub dpd_delay_ms: u64,
    pub dpd_action: DpdAction,
    /// Rekey the IKE SA this long after it was created (section 2.18);
    /// 0: only answer the peer's rekeys.
    pub rekey_time_ms: u64,
    /// Reauthenticate this long after the IKE SA was created: a new IKE SA
    /// from scratch with new CHILD SAs, then the old one is deleted
    /// (make-before-break); 0: never.
    pub reauth_time_ms: u64,
}

/// Retransmission timing (section 2.1) and the responder's defences.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// First retransmission after this long, doubling, at most `retransmit_tries` sends in all.
    pub retransmit_base_ms: u64,
    /// Sends of a request in all, the first included; then the peer is presumed dead.
    pub retransmit_tries: u32,
    /// A responder's half-open IKE SA is dropped after this long.
    pub half_open_ms: u64,
    /// With this many half-open IKE SAs, new initiators must return a
    /// COOKIE first (section 2.6).
    pub cookie_threshold: usize,
    /// Above this many half-open IKE SAs, IKE_SA_INIT requests are dropped.
    pub max_half_open: usize,
    /// IKE_SA_INIT requests accepted per second from one source address
    /// (and the burst allowed); the rest are dropped and counted.
    pub init_per_source: u32,
    /// Larger datagrams are dropped unread (strongSwan's `max_packet`
    /// default; nothing we negotiate needs more without fragmentation).
    pub max_message: usize,
    /// Bytes of IKE_SA_INIT messages half-open SAs may hold together; above
    /// it new initiators are dropped until some complete or time out, so a
    /// flood of large messages cannot exhaust the guest's memory.
    pub half_open_budget: usize,
    /// Half-open SAs one source address may hold: a few hosts with real
    /// addresses (which pass COOKIEs) cannot fill the table for everyone.
    pub half_open_per_source: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            retransmit_base_ms: 1000,
            retransmit_tries: 6,
            half_open_ms: 30_000,
            cookie_threshold: 64,
            max_half_open: 4096,
            init_per_source: 20,
            max_message: 10_000,
            half_open_budget: 4 << 20,
            half_open_per_source: 16,
        }
    }
}

impl Timing {
    /// How long a peer keeps retransmitting a request before it gives up.
    pub fn retransmit_span(&self) -> u64 {
        self.retransmit_base_ms.saturating_mul((1u64 << self.retransmit_tries.min(16)) - 1)
    }
}

/// A CHILD SA's lifetimes after defaults (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    /// Milliseconds after creation (0: we do not rekey by time).
    pub rekey_time: u64,
    /// Soft volume limits, jittered per SA when installed.
    pub rekey_bytes: u64,
    pub rekey_packets: u64,
    /// Hard limits with the defaults applied (0: none).
    pub life_time: u64,
    pub life_bytes: u64,
    pub life_packets: u64,
}

impl Lifetimes {
    /// strongSwan's convention: without a hard limit, 110 % of the soft one;
    /// by time at least `margin_ms` more, so that a rekey that needs all its
    /// retransmissions still finishes before the hard limit.
    fn from_config(c: &ChildConfig, margin_ms: u64) -> Result<Lifetimes, String> {
        let hard = |soft: u64, hard: u64, what: &str, margin: u64| -> Result<u64, String> {
            match (soft, hard) {
                (0, 0) => Ok(0),
                (s, 0) => Ok(s.saturating_add((s / 10).max(margin).max(1))),
                (s, h) if s != 0 && h <= s => Err(format!("life_{what} ({h}) must be above rekey_{what} ({s})")),
                (_, h) => Ok(h),
            }
        };
        Ok(Lifetimes {
            rekey_time: c.rekey_time_ms,
            rekey_bytes: c.rekey_bytes,
            rekey_packets: c.rekey_packets,
            life_time: hard(c.rekey_time_ms, c.life_time_ms, "time", margin_ms)?,
            life_bytes: hard(c.rekey_bytes, c.life_bytes, "bytes", 0)?,
            life_packets: hard(c.rekey_packets, c.life_packets, "packets", 0)?,
        })
    }
}

/// The most a CHILD SA may carry before the engine deletes it (0: no
/// limit of that kind): its config's hard lifetimes with the defaults
/// applied, or the policy grant's where it names lifetimes. The engine
/// deletes at or before these (hard times are jittered down); a host that
/// does not trust the engine holds it to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardLimits {
    /// Milliseconds after the CHILD SA was made.
    pub time_ms: u64,
    pub bytes: u64,
    pub packets: u64,
}

impl HardLimits {
    /// For CHILD config `c` of an IKE SA with `grant`, as an engine with
    /// `timing` sets them.
    pub fn of(c: &ChildConfig, grant: &crate::policy::Grant, timing: &Timing) -> Result<HardLimits, String> {
        let margin = timing.retransmit_span();
        let life = grant.lifetimes(Lifetimes::from_config(c, margin)?, margin);
        Ok(HardLimits { time_ms: life.life_time, bytes: life.life_bytes, packets: life.life_packets })
    }

    /// The larger of each kind, none (0) above any number: what one of
    /// several configs allows.
    pub fn either(self, other: HardLimits) -> HardLimits {
        let max = |a: u64, b: u64| if a == 0 || b == 0 { 0 } else { a.max(b) };
        HardLimits {
            time_ms: max(self.time_ms, other.time_ms),
            bytes: max(self.bytes, other.bytes),
            packets: max(self.packets, other.packets),
        }
    }
}

/// A CHILD SA template of a connection, parsed.
pub(crate) struct Child {
    /// The CHILD config's name in the connection.
    pub name: String,
    /// Our side's selectors, from the configured subnets.
    pub local_ts: Vec<Ts>,
    /// The peer's side's selectors.
    pub remote_ts: Vec<Ts>,
    /// ESP proposals, in preference order.
    pub esp: Vec<proposal::Config>,
    /// Lifetimes with the defaults applied.
    pub life: Lifetimes,
}

/// A connection as the engine keeps it.
pub(crate) struct Connection {
    /// The configuration as the host gave it.
    pub cfg: ConnectionConfig,
    /// Our identity, parsed (never %any).
    pub local_id: Identity,
    /// The identity the peer must present (may be %any).
    pub remote_id: Identity,
    /// IKE proposals, in preference order.
    pub ike: Vec<proposal::Config>,
    /// Its CHILD SA templates, in config order.
    pub children: Vec<Child>,
    /// Removed by a reload: it matches no peer and no name, but keeps its
    /// index, by which SAs (and their checkpoints) name connections.
    pub removed: bool,
}

impl Connection {
    /// Parse a connection's proposals, identities and selectors; the
    /// warnings name algorithms that were skipped.
    pub fn new(cfg: ConnectionConfig, timing: &Timing) -> Result<(Connection, Vec<String>), Error> {
        let at = |k: &str, e: String| Error::Config(format!("connection {:?}: {k}: {e}", cfg.name));
        let (ike, mut warnings) = proposal::parse(&cfg.ike_proposals, Kind::Ike).map_err(|e| at("proposals", e))?;
        let local_id = Identity::parse(&cfg.local_id).map_err(|e| at("local id", e))?;
        if local_id == Identity::Any {
            return Err(at("local id", "must name us, not %any".into()));
        }
        let remote_id = Identity::parse(&cfg.remote_id).map_err(|e| at("remote id", e))?;
        if cfg.children.is_empty() {
            return Err(at("children", "at least one CHILD SA is needed".into()));
        }
        let mut children = Vec::new();
        for c in &cfg.children {
            let ch =
                |k: &str, e: String| Error::Config(format!("connection {:?}: child {:?}: {k}: {e}", cfg.name, c.name));
            let (esp, w) = proposal::parse(&c.esp_proposals, Kind::Esp).map_err(|e| ch("esp_proposals", e))?;
            warnings.extend(w);
            let parse_ts = |v: &[String], k: &str| -> Result<Vec<Ts>, Error> {
                if v.is_empty() {
                    return Err(ch(k, "at least one subnet is needed".into()));
                }
                v.iter().map(|s| ts::from_cidr(s).map_err(|e| ch(k, e))).collect()
            };
            children.push(Child {
                name: c.name.clone(),
                local_ts: parse_ts(&c.local_ts, "local_ts")?,
                remote_ts: parse_ts(&c.remote_ts, "remote_ts")?,
                esp,
                life: Lifetimes::from_config(c, timing.retransmit_span()).map_err(|e| ch("lifetimes", e))?,
            });
        }
        Ok((Connection { cfg, local_id, remote_id, ike, children, removed: false }, warnings))
    }

    /// Whether this connection accepts an IKE SA between these addresses.
    pub fn matches_addrs(&self, local: &IpAddr, remote: &IpAddr) -> bool {
        !self.removed
            && (self.cfg.local_addrs.is_empty() || self.cfg.local_addrs.contains(local))
            && (self.cfg.remote_addrs.is_empty() || self.cfg.remote_addrs.contains(remote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Grant;

    #[test]
    fn hard_limits_apply_the_defaults_and_the_grant() {
        let t = Timing::default();
        let c = ChildConfig { rekey_time_ms: 3_600_000, rekey_bytes: 1000, ..Default::default() };
        let h = HardLimits::of(&c, &Grant::default(), &t).unwrap();
        assert_eq!(h, HardLimits { time_ms: 3_960_000, bytes: 1100, packets: 0 }, "110 %, none without a soft limit");
        let short = ChildConfig { rekey_time_ms: 60_000, ..Default::default() };
        let h2 = HardLimits::of(&short, &Grant::default(), &t).unwrap();
        assert_eq!(h2.time_ms, 60_000 + t.retransmit_span(), "at least the retransmissions above the rekey");
        let g = Grant { child_rekey_time_ms: 600_000, child_life_time_ms: 900_000, ..Default::default() };
        assert_eq!(HardLimits::of(&c, &g, &t).unwrap().time_ms, 900_000, "the grant's in place of the config's");
        let other = HardLimits { time_ms: 0, bytes: 5000, packets: 7 };
        assert_eq!(h.either(other), HardLimits { time_ms: 0, bytes: 5000, packets: 0 }, "none is above any number");
    }
}
