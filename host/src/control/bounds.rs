//! What the configuration and the policy let a connection's CHILD SAs
//! carry: the IKE guest narrows the selectors (RFC 7296 section 2.9) and
//! picks the ESP transform (section 2.7), but the host does not take its
//! word for the result. An installed CHILD SA is held to the one
//! `[[connection.children]]` entry it names (a guest naming a child its
//! connection lacks gets nothing): its selectors must lie within that
//! child's configured `local_ts` and `remote_ts`, or a guest a peer broke
//! could widen that peer's SA to every address of the connection's routing
//! domain, or give one child's SA another child's subnets, and draw their
//! traffic; its transform must be one that child's `esp_proposals` or the
//! policy's grant offer, or such a guest could take a weaker one than the
//! operator allowed; and its hard lifetimes (bytes and packets, which the
//! data plane counts against the install's limits, and time, which the
//! host watches) no longer than the grant's or that child's.
use std::collections::HashMap;

use wasmsec_crypto::ChildKeyExchange;
use wasmsec_ike::proposal::{self, Encr, Kind};
use wasmsec_ike::{ChildConfig, HardLimits, Timing};
use wasmsec_wire::ike::{EncrId, IntegId};

use crate::config;
use crate::datapath::tos::Override;
use crate::wasm::esp::TrafficSelector;

/// A connection's children's bounds, each by its name.
#[derive(Debug, Clone, Default)]
pub struct ConnectionBounds {
    children: Vec<ChildBounds>,
}

/// One child's configured selectors, as address ranges (any protocol and
/// port: the configuration names subnets only), its ESP proposals, its
/// lifetimes and its anti-replay window.
#[derive(Debug, Clone)]
pub struct ChildBounds {
    name: String,
    local: Vec<TrafficSelector>,
    remote: Vec<TrafficSelector>,
    esp: Vec<proposal::Config>,
    /// The child's lifetimes (the other fields are left empty); none
    /// allows no install.
    lifetimes: Option<ChildConfig>,
    /// The window its inbound SAs get (0: anti-replay off), which the
    /// host holds the ESP guest to (`crate::keys::KeyUse::Open`).
    replay_window: u32,
    /// What its own `copy_dscp` and `copy_ecn` say of its SAs' outer
    /// header (not a bound: carried to the data path with the install).
    tos: Override,
}

impl Default for ChildBounds {
    /// Nothing allowed; the default window, not none.
    fn default() -> ChildBounds {
        ChildBounds {
            name: String::new(),
            local: Vec::new(),
            remote: Vec::new(),
            esp: Vec::new(),
            lifetimes: None,
            replay_window: config::DEFAULT_REPLAY_WINDOW,
            tos: Override::default(),
        }
    }
}

/// A CHILD SA's ESP transform as the IKE guest installs it (IANA numbers,
/// RFC 7296 section 3.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspTransform {
    pub encr: u16,
    pub key_bits: u16,
    pub integ: u16,
    pub esn: bool,
}

impl ConnectionBounds {
    /// Each of the connection's children's selectors, proposals and
    /// lifetimes.
    pub fn of(c: &config::Connection) -> ConnectionBounds {
        let children = c
            .children
            .iter()
            .map(|ch| {
                let ranges = |v: &[config::Prefix]| v.iter().map(config::Prefix::selector).collect();
                ChildBounds {
                    name: ch.name.clone(),
                    local: ranges(&ch.local_ts),
                    remote: ranges(&ch.remote_ts),
                    // The configuration parsed them when it was read; one
                    // that no longer does allows nothing rather than anything.
                    esp: esp_proposals(&ch.esp_proposals.0).unwrap_or_default(),
                    lifetimes: Some(ChildConfig {
                        name: ch.name.clone(),
                        rekey_time_ms: u64::from(ch.rekey_time) * 1000,
                        rekey_bytes: ch.rekey_bytes,
                        rekey_packets: ch.rekey_packets,
                        life_time_ms: u64::from(ch.life_time) * 1000,
                        life_bytes: ch.life_bytes,
                        life_packets: ch.life_packets,
                        ..ChildConfig::default()
                    }),
                    replay_window: ch.replay_window,
                    tos: ch.tos(),
                }
            })
            .collect();
        ConnectionBounds { children }
    }

    pub fn from_children(children: Vec<ChildBounds>) -> ConnectionBounds {
        ConnectionBounds { children }
    }

    /// The bounds of the child named `name` (the `child` of an install),
    /// `None` where the connection has no such child.
    pub fn child(&self, name: &str) -> Option<&ChildBounds> {
        self.children.iter().find(|c| c.name == name)
    }
}

impl ChildBounds {
    /// From address ranges (any protocol and port) on each side and ESP
    /// proposals in strongSwan's syntax; no lifetimes yet.
    pub fn new(
        name: &str,
        local: Vec<TrafficSelector>,
        remote: Vec<TrafficSelector>,
        esp: &str,
    ) -> Result<ChildBounds, String> {
        let esp = esp_proposals(esp)?;
        Ok(ChildBounds { name: name.into(), local, remote, esp, ..ChildBounds::default() })
    }

    /// The anti-replay window of the child's inbound SAs, in packets.
    pub fn replay_window(&self) -> u32 {
        self.replay_window
    }

    /// The child's own `copy_dscp` and `copy_ecn`.
    pub fn tos(&self) -> Override {
        self.tos
    }

    /// With the child's lifetimes (RFC 7296 section 2.8: the config's
    /// rekey and hard limits).
    pub fn with_lifetimes(mut self, child: ChildConfig) -> ChildBounds {
        self.lifetimes = Some(child);
        self
    }

    /// With another anti-replay window than the default.
    pub fn with_replay_window(mut self, packets: u32) -> ChildBounds {
        self.replay_window = packets;
        self
    }

    /// The hard limits a CHILD SA of this child may have with `grant`.
    /// `None` where they do not compute (the configuration checked them
    /// when it was read) or the child has none, which allows no install,
    /// as a proposal that does not parse.
    pub fn hard_limits(&self, grant: &GrantBounds) -> Option<HardLimits> {
        HardLimits::of(self.lifetimes.as_ref()?, &grant.lifetimes, &Timing::default()).ok()
    }

    /// Whether `t` is one of the ESP proposals `grant` gave the peer or,
    /// where it names none, one of the child's.
    pub fn allow_transform(&self, grant: &GrantBounds, t: EspTransform) -> bool {
        let ours = grant.esp.as_deref().unwrap_or(&self.esp);
        let encr = Encr { id: EncrId::from(t.encr), key_bits: Some(t.key_bits) };
        proposal::allows_esp(ours, encr, IntegId::from(t.integ), t.esn)
    }

    /// Whether a CHILD SA with transform `t` was keyed as the proposals
    /// that allow it ask (those `grant` gave the peer or, where it names
    /// none, the child's): the first CHILD SA of an IKE SA without a key
    /// exchange, any other with the proposal's PFS group, or none where
    /// the proposal has none (RFC 7296 section 1.3.1).
    pub fn allow_key_exchange(&self, grant: &GrantBounds, t: EspTransform, kx: ChildKeyExchange) -> bool {
        let ChildKeyExchange::Created(group) = kx else { return true };
        let ours = grant.esp.as_deref().unwrap_or(&self.esp);
        let encr = Encr { id: EncrId::from(t.encr), key_bits: Some(t.key_bits) };
        proposal::allows_esp_key_exchange(ours, encr, IntegId::from(t.integ), t.esn, group)
    }

    /// Whether every selector on each side lies within one configured range
    /// of that side (the same address family, the start and end inside).
    pub fn hold(&self, local: &[TrafficSelector], remote: &[TrafficSelector]) -> bool {
        within(&self.local, local) && within(&self.remote, remote)
    }
}

fn within(bounds: &[TrafficSelector], ts: &[TrafficSelector]) -> bool {
    ts.iter().all(|t| {
        let family = t.start_address.len();
        t.end_address.len() == family
            && t.start_address <= t.end_address
            && bounds.iter().any(|b| {
                b.start_address.len() == family && b.start_address <= t.start_address && t.end_address <= b.end_address
            })
    })
}

/// What a policy granted a peer (RFC 7296 section 2.9 narrowing within
/// the connection's selectors): its subnets on each side, `None` where the
/// grant does not narrow.
#[derive(Debug, Clone, Default)]
pub struct GrantBounds {
    local: Option<Vec<TrafficSelector>>,
    remote: Option<Vec<TrafficSelector>>,
    /// The grant's ESP proposals, `None` where it leaves the connection's.
    esp: Option<Vec<proposal::Config>>,
    /// The grant's CHILD SA lifetimes (0: the connection's), as the
    /// engine takes them.
    lifetimes: wasmsec_ike::Grant,
}

impl GrantBounds {
    /// From a grant's `local-subnets` and `peer-subnets` (CIDR prefixes;
    /// empty: not narrowed), `esp-proposals` ("": the connection's) and
    /// CHILD SA lifetimes (0: the connection's). The host checked the
    /// grant when the module answered, so a prefix or proposal that does
    /// not parse is an error, not a guess.
    pub fn of(g: &crate::policy::Grant) -> Result<GrantBounds, String> {
        let side = |v: &[String]| -> Result<Option<Vec<TrafficSelector>>, String> {
            if v.is_empty() {
                return Ok(None);
            }
            v.iter().map(|s| config::Prefix::parse(s).map(|p| p.selector())).collect::<Result<_, _>>().map(Some)
        };
        let esp = if g.esp_proposals.is_empty() { None } else { Some(esp_proposals(&g.esp_proposals)?) };
        let lifetimes = wasmsec_ike::Grant {
            child_rekey_time_ms: u64::from(g.child_rekey_time_s) * 1000,
            child_life_time_ms: u64::from(g.child_life_time_s) * 1000,
            ..wasmsec_ike::Grant::default()
        };
        Ok(GrantBounds { local: side(&g.local_subnets)?, remote: side(&g.peer_subnets)?, esp, lifetimes })
    }

    /// Whether the selectors lie within the granted subnets, side by side.
    pub fn hold(&self, local: &[TrafficSelector], remote: &[TrafficSelector]) -> bool {
        self.local.as_deref().is_none_or(|b| within(b, local))
            && self.remote.as_deref().is_none_or(|b| within(b, remote))
    }
}

/// Whether an install's hard byte and packet limits (0: none) are within
/// `allowed` (0: none).
pub fn limits_within(allowed: &HardLimits, hard_bytes: u64, hard_packets: u64) -> bool {
    let within = |allowed: u64, asked: u64| allowed == 0 || (asked != 0 && asked <= allowed);
    within(allowed.bytes, hard_bytes) && within(allowed.packets, hard_packets)
}

/// ESP proposals in strongSwan's syntax (the warnings about skipped
/// algorithms went to the log when the configuration or grant was read).
fn esp_proposals(s: &str) -> Result<Vec<proposal::Config>, String> {
    proposal::parse(s, Kind::Esp).map(|(p, _)| p)
}

/// A guest's selectors for the log: the first four, and how many more (a
/// guest's list has no bound of its own).
pub fn shown(ts: &[TrafficSelector]) -> String {
    let mut s: Vec<String> = ts.iter().take(4).map(config::show_ts).collect();
    if ts.len() > 4 {
        s.push(format!("and {} more", ts.len() - 4));
    }
    s.join(", ")
}

/// Each connection's bounds, by name.
pub fn of_all(connections: &[config::Connection]) -> HashMap<String, ConnectionBounds> {
    connections.iter().map(|c| (c.name.get_ref().clone(), ConnectionBounds::of(c))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(local: &[&str], peer: &[&str], esp: &str) -> crate::policy::Grant {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        crate::policy::Grant {
            local_subnets: strings(local),
            peer_subnets: strings(peer),
            esp_proposals: esp.into(),
            ..crate::policy::connection_grant("")
        }
    }

    fn ts(start: [u8; 4], end: [u8; 4]) -> TrafficSelector {
        TrafficSelector::addresses(start.to_vec(), end.to_vec())
    }

    #[test]
    fn selectors_must_lie_within_the_configured_subnets() {
        let p = |s: &str| config::Prefix::parse(s).unwrap().selector();
        let b = ChildBounds {
            local: vec![p("10.1.0.0/16"), p("fd00::/64")],
            remote: vec![p("10.2.0.0/24"), p("10.3.0.0/24")],
            ..ChildBounds::default()
        };
        let inside = [ts([10, 2, 0, 0], [10, 2, 0, 255]), ts([10, 3, 0, 7], [10, 3, 0, 7])];
        assert!(b.hold(&[ts([10, 1, 2, 0], [10, 1, 2, 255])], &inside));
        assert!(b.hold(&[], &[]), "nothing to carry is within anything");
        // One address past a configured subnet, across two of them, the
        // whole address space, the other family, reversed, mixed lengths.
        assert!(!b.hold(&[], &[ts([10, 2, 0, 0], [10, 2, 1, 0])]));
        assert!(!b.hold(&[], &[ts([10, 2, 0, 0], [10, 3, 0, 255])]));
        assert!(!b.hold(&[ts([0, 0, 0, 0], [255, 255, 255, 255])], &inside));
        assert!(!b.hold(&[], &[p("fd00::/64")]), "remote has no IPv6");
        assert!(b.hold(&[p("fd00::/96")], &[]));
        assert!(!b.hold(&[ts([10, 1, 0, 9], [10, 1, 0, 1])], &[]), "start above end");
        let mixed = TrafficSelector::addresses(vec![10, 1, 0, 0], p("fd00::/64").end_address);
        assert!(!b.hold(&[mixed], &[]));
    }

    #[test]
    fn a_grant_narrows_only_the_sides_it_names() {
        let g = GrantBounds::of(&grant(&[], &["10.2.0.128/25"], "")).unwrap();
        let wide = [ts([0, 0, 0, 0], [255, 255, 255, 255])];
        assert!(g.hold(&wide, &[ts([10, 2, 0, 200], [10, 2, 0, 255])]), "local not narrowed");
        assert!(!g.hold(&[], &[ts([10, 2, 0, 0], [10, 2, 0, 255])]), "the peer's side is");
        assert!(GrantBounds::default().hold(&wide, &wide));
        assert!(GrantBounds::of(&grant(&["10.1.0.0/33"], &[], "")).is_err());
        assert!(GrantBounds::of(&grant(&[], &[], "aes256gcm16-bogus")).is_err());
    }

    #[test]
    fn a_transform_must_be_the_grants_or_else_the_connections() {
        let gcm = |key_bits| EspTransform { encr: EncrId::AesGcm16.raw(), key_bits, integ: 0, esn: false };
        let cbc = EspTransform {
            encr: EncrId::AesCbc.raw(),
            key_bits: 128,
            integ: IntegId::HmacSha2_256_128.raw(),
            esn: false,
        };
        let b = ChildBounds::new("c", vec![], vec![], "aes256gcm16,chacha20poly1305").unwrap();
        let no_grant = GrantBounds::default();
        assert!(b.allow_transform(&no_grant, gcm(256)));
        assert!(!b.allow_transform(&no_grant, gcm(128)), "a shorter key than configured");
        assert!(!b.allow_transform(&no_grant, cbc), "a cipher not configured");
        assert!(!b.allow_transform(&no_grant, EspTransform { esn: true, ..gcm(256) }), "ESN not configured");
        // The grant's proposals replace the connection's.
        let g = GrantBounds::of(&grant(&[], &[], "aes128-sha256")).unwrap();
        assert!(b.allow_transform(&g, cbc));
        assert!(!b.allow_transform(&g, gcm(256)), "in place of, not besides");
        // A child with no usable proposal allows none.
        assert!(!ChildBounds::default().allow_transform(&no_grant, gcm(256)));
    }

    #[test]
    fn a_created_child_sa_has_the_pfs_its_proposal_asks() {
        use wasmsec_crypto::ChildKeyExchange::{Created, First};
        use wasmsec_wire::ike::DhGroup;
        let gcm = |key_bits| EspTransform { encr: EncrId::AesGcm16.raw(), key_bits, integ: 0, esn: false };
        let none = GrantBounds::default();
        // AES-256 only with X25519 PFS; AES-128 without PFS.
        let b = ChildBounds::new("c", vec![], vec![], "aes256gcm16-x25519,aes128gcm16").unwrap();
        assert!(b.allow_key_exchange(&none, gcm(256), First), "IKE_AUTH's child has none, whatever the proposal");
        assert!(b.allow_key_exchange(&none, gcm(256), Created(Some(DhGroup::X25519))));
        assert!(!b.allow_key_exchange(&none, gcm(256), Created(None)), "a rekey without the PFS asked for");
        assert!(!b.allow_key_exchange(&none, gcm(256), Created(Some(DhGroup::Modp2048))), "another group");
        assert!(b.allow_key_exchange(&none, gcm(128), Created(None)));
        assert!(!b.allow_key_exchange(&none, gcm(128), Created(Some(DhGroup::X25519))), "that proposal has no group");
        // The grant's proposals replace the child's here too.
        let g = GrantBounds::of(&grant(&[], &[], "aes256gcm16")).unwrap();
        assert!(b.allow_key_exchange(&g, gcm(256), Created(None)));
    }

    #[test]
    fn hard_limits_are_the_grants_or_else_the_childs() {
        let child = |name: &str, rekey_time_ms, life_bytes| ChildConfig {
            name: name.into(),
            rekey_time_ms,
            life_bytes,
            ..ChildConfig::default()
        };
        let bounds = |c| ChildBounds::new("a", vec![], vec![], "aes256gcm16").unwrap().with_lifetimes(c);
        let (a, b) = (bounds(child("a", 3_600_000, 1 << 30)), bounds(child("b", 600_000, 1 << 20)));
        let h = a.hard_limits(&GrantBounds::default()).unwrap();
        assert_eq!((h.time_ms, h.bytes, h.packets), (3_960_000, 1 << 30, 0));
        let hb = b.hard_limits(&GrantBounds::default()).unwrap();
        assert_eq!(hb.bytes, 1 << 20, "each child its own, not the largest");
        assert!(hb.time_ms < 700_000, "b's time, not a's ({})", hb.time_ms);
        let mut g = grant(&[], &[], "");
        g.child_rekey_time_s = 120;
        g.child_life_time_s = 300;
        let hg = a.hard_limits(&GrantBounds::of(&g).unwrap()).unwrap();
        assert_eq!(hg.time_ms, 300_000, "the grant's time in place of the child's");
        assert_eq!(ChildBounds::default().hard_limits(&GrantBounds::default()), None, "no lifetimes: no install");
        let broken = ChildConfig { rekey_bytes: 100, life_bytes: 50, ..ChildConfig::default() };
        let b2 = ChildBounds::default().with_lifetimes(broken);
        assert_eq!(b2.hard_limits(&GrantBounds::default()), None, "lifetimes that do not compute allow none");
        // Installs: within, none where a limit is set, above it.
        assert!(limits_within(&h, 1 << 30, 0));
        assert!(limits_within(&h, 1000, 0));
        assert!(!limits_within(&h, 0, 0), "no byte limit where the config has one");
        assert!(!limits_within(&h, (1 << 30) + 1, 0));
        assert!(!limits_within(&hb, 1 << 30, 0), "child a's limit is beyond child b's");
        assert!(limits_within(&HardLimits::default(), 0, 0));
    }

    /// Each child bounds its own CHILD SAs: not the union of the
    /// connection's children, and a child the connection lacks has none.
    #[test]
    fn a_connection_bounds_each_child_by_its_own_entry() {
        let text = r#"
[tunnel]
name = "wsec0"
[[connection]]
name = "two"
remote_addrs = ["198.18.0.1"]
local_id = "a.example"
remote_id = "b.example"
psk = "env:PSK"
[[connection.children]]
name = "web"
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
esp_proposals = "aes256gcm16"
[[connection.children]]
name = "db"
local_ts = ["10.1.9.0/24"]
remote_ts = ["10.9.0.0/24"]
esp_proposals = "aes128gcm16"
life_bytes = 1000000
replay_window = 64
copy_dscp = "no"
"#;
        let cfg = config::Config::parse(text, "two.toml").unwrap();
        let b = ConnectionBounds::of(&cfg.connection[0]);
        let (web, db) = (b.child("web").unwrap(), b.child("db").unwrap());
        assert!(b.child("other").is_none());
        let p = |s: &str| config::Prefix::parse(s).unwrap().selector();
        assert!(web.hold(&[p("10.1.0.0/24")], &[p("10.2.0.0/24")]));
        assert!(!web.hold(&[p("10.1.9.0/24")], &[p("10.9.0.0/24")]), "db's subnets are not web's");
        assert!(db.hold(&[p("10.1.9.0/24")], &[p("10.9.0.0/24")]));
        assert!(!db.hold(&[p("10.1.0.0/24")], &[p("10.2.0.0/24")]));
        let gcm = |key_bits| EspTransform { encr: EncrId::AesGcm16.raw(), key_bits, integ: 0, esn: false };
        let none = GrantBounds::default();
        assert!(web.allow_transform(&none, gcm(256)) && !web.allow_transform(&none, gcm(128)));
        assert!(db.allow_transform(&none, gcm(128)) && !db.allow_transform(&none, gcm(256)));
        assert_eq!(web.hard_limits(&none).unwrap().bytes, 0);
        assert_eq!(db.hard_limits(&none).unwrap().bytes, 1_000_000);
        assert_eq!((web.replay_window(), db.replay_window()), (config::DEFAULT_REPLAY_WINDOW, 64));
        assert_eq!(ChildBounds::default().replay_window(), config::DEFAULT_REPLAY_WINDOW, "never off unasked");
        let db_own = Override { dscp: Some(config::CopyDscp::No), ecn: None };
        assert_eq!((web.tos(), db.tos()), (Override::default(), db_own), "each child its own");
    }
}
