//! What the configuration lets a connection's CHILD SAs carry: the IKE
//! guest narrows the selectors (RFC 7296 section 2.9), but the host does
//! not take its word for the result. An installed CHILD SA's selectors
//! must lie within its connection's configured `local_ts` and `remote_ts`
//! (any child's), or a guest a peer broke could widen that peer's SA to
//! every address of the connection's routing domain and draw its traffic.
use std::collections::HashMap;

use crate::config;
use crate::wasm::esp::TrafficSelector;

/// A connection's configured selectors, as address ranges (any protocol
/// and port: the configuration names subnets only).
#[derive(Debug, Clone, Default)]
pub struct SelectorBounds {
    local: Vec<TrafficSelector>,
    remote: Vec<TrafficSelector>,
}

impl SelectorBounds {
    /// The union of the connection's children's selectors.
    pub fn of(c: &config::Connection) -> SelectorBounds {
        let ranges = |side: fn(&config::Child) -> &Vec<config::Prefix>| {
            c.children.iter().flat_map(|ch| side(ch).iter().map(config::Prefix::selector)).collect()
        };
        SelectorBounds { local: ranges(|ch| &ch.local_ts), remote: ranges(|ch| &ch.remote_ts) }
    }

    /// From address ranges (any protocol and port) on each side.
    pub fn new(local: Vec<TrafficSelector>, remote: Vec<TrafficSelector>) -> SelectorBounds {
        SelectorBounds { local, remote }
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
}

impl GrantBounds {
    /// From a grant's `local-subnets` and `peer-subnets` (CIDR prefixes;
    /// empty: not narrowed). The host checked the grant when the module
    /// answered, so a prefix that does not parse is an error, not a guess.
    pub fn of(local: &[String], peer: &[String]) -> Result<GrantBounds, String> {
        let side = |v: &[String]| -> Result<Option<Vec<TrafficSelector>>, String> {
            if v.is_empty() {
                return Ok(None);
            }
            v.iter().map(|s| config::Prefix::parse(s).map(|p| p.selector())).collect::<Result<_, _>>().map(Some)
        };
        Ok(GrantBounds { local: side(local)?, remote: side(peer)? })
    }

    /// Whether the selectors lie within the granted subnets, side by side.
    pub fn hold(&self, local: &[TrafficSelector], remote: &[TrafficSelector]) -> bool {
        self.local.as_deref().is_none_or(|b| within(b, local))
            && self.remote.as_deref().is_none_or(|b| within(b, remote))
    }
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
pub fn of_all(connections: &[config::Connection]) -> HashMap<String, SelectorBounds> {
    connections.iter().map(|c| (c.name.get_ref().clone(), SelectorBounds::of(c))).collect()
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
        let b = SelectorBounds {
            local: vec![p("10.1.0.0/16"), p("fd00::/64")],
            remote: vec![p("10.2.0.0/24"), p("10.3.0.0/24")],
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
        let g = GrantBounds::of(&[], &["10.2.0.128/25".to_string()]).unwrap();
        let wide = [ts([0, 0, 0, 0], [255, 255, 255, 255])];
        assert!(g.hold(&wide, &[ts([10, 2, 0, 200], [10, 2, 0, 255])]), "local not narrowed");
        assert!(!g.hold(&[], &[ts([10, 2, 0, 0], [10, 2, 0, 255])]), "the peer's side is");
        assert!(GrantBounds::default().hold(&wide, &wide));
        assert!(GrantBounds::of(&["10.1.0.0/33".to_string()], &[]).is_err());
    }
}
