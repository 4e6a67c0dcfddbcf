//! What the configuration and the policy let a connection's CHILD SAs
//! carry: the IKE guest narrows the selectors (RFC 7296 section 2.9) and
//! picks the ESP transform (section 2.7), but the host does not take its
//! word for the result. An installed CHILD SA's selectors must lie within
//! its connection's configured `local_ts` and `remote_ts` (any child's),
//! or a guest a peer broke could widen that peer's SA to every address of
//! the connection's routing domain and draw its traffic; and its transform
//! must be one the connection's `esp_proposals` (any child's) or the
//! policy's grant offer, or such a guest could take a weaker one than the
//! operator allowed.
use std::collections::HashMap;

use wasmsec_ike::proposal::{self, Encr, Kind};
use wasmsec_wire::ike::{EncrId, IntegId};

use crate::config;
use crate::wasm::esp::TrafficSelector;

/// A connection's configured selectors, as address ranges (any protocol
/// and port: the configuration names subnets only), and its ESP proposals.
#[derive(Debug, Clone, Default)]
pub struct ConnectionBounds {
    local: Vec<TrafficSelector>,
    remote: Vec<TrafficSelector>,
    esp: Vec<proposal::Config>,
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
    /// The union of the connection's children's selectors and proposals.
    pub fn of(c: &config::Connection) -> ConnectionBounds {
        let ranges = |side: fn(&config::Child) -> &Vec<config::Prefix>| {
            c.children.iter().flat_map(|ch| side(ch).iter().map(config::Prefix::selector)).collect()
        };
        // The configuration parsed them when it was read; one that no
        // longer does allows nothing rather than anything.
        let esp = c.children.iter().flat_map(|ch| esp_proposals(&ch.esp_proposals.0).unwrap_or_default()).collect();
        ConnectionBounds { local: ranges(|ch| &ch.local_ts), remote: ranges(|ch| &ch.remote_ts), esp }
    }

    /// From address ranges (any protocol and port) on each side and ESP
    /// proposals in strongSwan's syntax.
    pub fn new(
        local: Vec<TrafficSelector>,
        remote: Vec<TrafficSelector>,
        esp: &str,
    ) -> Result<ConnectionBounds, String> {
        Ok(ConnectionBounds { local, remote, esp: esp_proposals(esp)? })
    }

    /// Whether `t` is one of the ESP proposals `grant` gave the peer or,
    /// where it names none, one of the connection's.
    pub fn allow_transform(&self, grant: &GrantBounds, t: EspTransform) -> bool {
        let ours = grant.esp.as_deref().unwrap_or(&self.esp);
        let encr = Encr { id: EncrId::from(t.encr), key_bits: Some(t.key_bits) };
        proposal::allows_esp(ours, encr, IntegId::from(t.integ), t.esn)
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
}

impl GrantBounds {
    /// From a grant's `local-subnets` and `peer-subnets` (CIDR prefixes;
    /// empty: not narrowed) and `esp-proposals` ("": the connection's).
    /// The host checked the grant when the module answered, so a prefix
    /// or proposal that does not parse is an error, not a guess.
    pub fn of(local: &[String], peer: &[String], esp: &str) -> Result<GrantBounds, String> {
        let side = |v: &[String]| -> Result<Option<Vec<TrafficSelector>>, String> {
            if v.is_empty() {
                return Ok(None);
            }
            v.iter().map(|s| config::Prefix::parse(s).map(|p| p.selector())).collect::<Result<_, _>>().map(Some)
        };
        let esp = if esp.is_empty() { None } else { Some(esp_proposals(esp)?) };
        Ok(GrantBounds { local: side(local)?, remote: side(peer)?, esp })
    }

    /// Whether the selectors lie within the granted subnets, side by side.
    pub fn hold(&self, local: &[TrafficSelector], remote: &[TrafficSelector]) -> bool {
        self.local.as_deref().is_none_or(|b| within(b, local))
            && self.remote.as_deref().is_none_or(|b| within(b, remote))
    }
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

    fn ts(start: [u8; 4], end: [u8; 4]) -> TrafficSelector {
        TrafficSelector::addresses(start.to_vec(), end.to_vec())
    }

    #[test]
    fn selectors_must_lie_within_the_configured_subnets() {
        let p = |s: &str| config::Prefix::parse(s).unwrap().selector();
        let b = ConnectionBounds {
            local: vec![p("10.1.0.0/16"), p("fd00::/64")],
            remote: vec![p("10.2.0.0/24"), p("10.3.0.0/24")],
            esp: Vec::new(),
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
        let g = GrantBounds::of(&[], &["10.2.0.128/25".to_string()], "").unwrap();
        let wide = [ts([0, 0, 0, 0], [255, 255, 255, 255])];
        assert!(g.hold(&wide, &[ts([10, 2, 0, 200], [10, 2, 0, 255])]), "local not narrowed");
        assert!(!g.hold(&[], &[ts([10, 2, 0, 0], [10, 2, 0, 255])]), "the peer's side is");
        assert!(GrantBounds::default().hold(&wide, &wide));
        assert!(GrantBounds::of(&["10.1.0.0/33".to_string()], &[], "").is_err());
        assert!(GrantBounds::of(&[], &[], "aes256gcm16-bogus").is_err());
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
        let b = ConnectionBounds::new(vec![], vec![], "aes256gcm16,chacha20poly1305").unwrap();
        let no_grant = GrantBounds::default();
        assert!(b.allow_transform(&no_grant, gcm(256)));
        assert!(!b.allow_transform(&no_grant, gcm(128)), "a shorter key than configured");
        assert!(!b.allow_transform(&no_grant, cbc), "a cipher not configured");
        assert!(!b.allow_transform(&no_grant, EspTransform { esn: true, ..gcm(256) }), "ESN not configured");
        // The grant's proposals replace the connection's.
        let g = GrantBounds::of(&[], &[], "aes128-sha256").unwrap();
        assert!(b.allow_transform(&g, cbc));
        assert!(!b.allow_transform(&g, gcm(256)), "in place of, not besides");
        // A connection whose children have no usable proposal allows none.
        assert!(!ConnectionBounds::default().allow_transform(&no_grant, gcm(256)));
    }
}
