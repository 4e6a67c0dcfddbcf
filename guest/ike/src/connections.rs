//! The loaded connections, and the indexes that find one without a pass
//! over all of them: by name (the admin calls), by the peer's address (a
//! new IKE_SA_INIT) and by the identity a connection names (IKE_AUTH). A
//! PoP loads thousands of connections; a pass over all of them per
//! handshake, and per reload step, made both grow with the count.
//!
//! A connection keeps its index for good, removed or not: IKE SAs and
//! their checkpoints name their connection by it, and so do the counters
//! by connection. Each index holds live connections only, in load order,
//! so "the first that fits" is the first in load order, as a pass was.
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::ops::Deref;

use wasmsec_wire::ike::Identification;

use crate::config::Connection;
use crate::error::Error;
use crate::identity::{IdKey, Identity};

#[derive(Default)]
pub(crate) struct Connections {
    list: Vec<Connection>,
    /// Live connections by name.
    by_name: HashMap<String, usize>,
    /// The latest removed connection of each name (its counters go on
    /// where it stopped when the name is loaded again).
    removed_by_name: HashMap<String, usize>,
    /// Live connections with peer addresses, by each address.
    by_remote: HashMap<IpAddr, BTreeSet<usize>>,
    /// Live connections that take any peer address.
    any_remote: BTreeSet<usize>,
    /// Live connections that name the peer's identity, by it.
    by_id: HashMap<IdKey, BTreeSet<usize>>,
    /// Live connections that take any identity (`%any`).
    any_id: BTreeSet<usize>,
}

impl Deref for Connections {
    type Target = [Connection];

    fn deref(&self) -> &[Connection] {
        &self.list
    }
}

impl Connections {
    /// Load a connection under a name no live one has. Returns its index,
    /// and that of the removed connection of the same name, if any.
    pub fn add(&mut self, conn: Connection) -> Result<(usize, Option<usize>), Error> {
        let name = &conn.cfg.name;
        if self.by_name.contains_key(name) {
            return Err(Error::Config(format!("connection {name:?} is defined twice")));
        }
        let i = self.list.len();
        self.by_name.insert(name.clone(), i);
        if conn.cfg.remote_addrs.is_empty() {
            self.any_remote.insert(i);
        }
        for a in &conn.cfg.remote_addrs {
            self.by_remote.entry(*a).or_default().insert(i);
        }
        match &conn.remote_id {
            Identity::Any => self.any_id.insert(i),
            Identity::Id(id) => self.by_id.entry(IdKey::of(id)).or_default().insert(i),
        };
        let before = self.removed_by_name.get(name).copied();
        self.list.push(conn);
        Ok((i, before))
    }

    /// Remove the live connection `name`; it keeps its index.
    pub fn remove(&mut self, name: &str) -> Result<usize, Error> {
        let i = self.index(name)?;
        self.by_name.remove(name);
        self.removed_by_name.insert(name.to_string(), i);
        let c = &mut self.list[i];
        c.removed = true;
        self.any_remote.remove(&i);
        for a in &c.cfg.remote_addrs {
            if let Some(set) = self.by_remote.get_mut(a) {
                set.remove(&i);
                if set.is_empty() {
                    self.by_remote.remove(a);
                }
            }
        }
        match &c.remote_id {
            Identity::Any => {
                self.any_id.remove(&i);
            }
            Identity::Id(id) => {
                let key = IdKey::of(id);
                if let Some(set) = self.by_id.get_mut(&key) {
                    set.remove(&i);
                    if set.is_empty() {
                        self.by_id.remove(&key);
                    }
                }
            }
        }
        Ok(i)
    }

    /// The live connection `name`.
    pub fn index(&self, name: &str) -> Result<usize, Error> {
        self.by_name.get(name).copied().ok_or_else(|| Error::Admin(format!("no connection {name:?}")))
    }

    /// The first live connection, in load order, that accepts an IKE SA
    /// between these addresses.
    pub fn for_addrs(&self, local: &IpAddr, remote: &IpAddr) -> Option<usize> {
        let fits = |i: &&usize| self.list[**i].matches_addrs(local, remote);
        let named = self.by_remote.get(remote).and_then(|s| s.iter().find(fits));
        let any = self.any_remote.iter().find(fits);
        named.into_iter().chain(any).min().copied()
    }

    /// The first live connection, in load order, that names this identity
    /// and fits.
    pub fn naming(&self, id: &Identification, fits: impl Fn(&Connection) -> bool) -> Option<usize> {
        let set = self.by_id.get(&IdKey::of(id))?;
        set.iter().copied().find(|&i| fits(&self.list[i]))
    }

    /// The first live connection, in load order, that takes any identity
    /// and fits.
    pub fn taking_any_id(&self, fits: impl Fn(&Connection) -> bool) -> Option<usize> {
        self.any_id.iter().copied().find(|&i| fits(&self.list[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChildConfig, ConnectionConfig, Timing};

    fn conn(name: &str, remote: &[&str], remote_id: &str) -> Connection {
        let cfg = ConnectionConfig {
            name: name.into(),
            remote_addrs: remote.iter().map(|a| a.parse().unwrap()).collect(),
            local_id: "gw.test".into(),
            remote_id: remote_id.into(),
            ike_proposals: "aes256gcm16-prfsha256-x25519".into(),
            children: vec![ChildConfig {
                name: "net".into(),
                local_ts: vec!["10.1.0.0/16".into()],
                remote_ts: vec!["10.2.0.0/16".into()],
                esp_proposals: "aes256gcm16".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        Connection::new(cfg, &Timing::default()).unwrap().0
    }

    fn id(s: &str) -> Identification {
        match Identity::parse(s).unwrap() {
            Identity::Id(i) => i,
            Identity::Any => unreachable!(),
        }
    }

    /// What a pass over every connection finds, as the engine did before.
    fn scan_addrs(c: &Connections, local: &IpAddr, remote: &IpAddr) -> Option<usize> {
        c.iter().position(|c| c.matches_addrs(local, remote))
    }

    #[test]
    fn finds_what_a_pass_finds_through_adds_and_removes() {
        let mut c = Connections::default();
        let peers = ["192.0.2.1", "192.0.2.2", "192.0.2.3"];
        // Names n0..n11: each peer address, several connections per
        // address, %any addresses and identities among them.
        let mut live = Vec::new();
        for k in 0..12 {
            let remote: Vec<&str> = match k % 4 {
                0 => vec![],
                1 => vec![peers[k % 3]],
                2 => vec![peers[0], peers[2]],
                _ => vec![peers[1]],
            };
            let rid = if k % 3 == 0 { "%any".to_string() } else { format!("peer{}.test", k % 2) };
            let (i, before) = c.add(conn(&format!("n{k}"), &remote, &rid)).unwrap();
            assert_eq!((i, before), (k, None));
            live.push(format!("n{k}"));
        }
        assert!(c.add(conn("n3", &[], "%any")).is_err(), "a live name twice");
        let local: IpAddr = "192.0.2.254".parse().unwrap();
        let check = |c: &Connections| {
            for p in peers.iter().chain(&["198.51.100.9"]) {
                let remote: IpAddr = p.parse().unwrap();
                assert_eq!(c.for_addrs(&local, &remote), scan_addrs(c, &local, &remote), "peer {p}");
                for who in ["peer0.test", "PEER1.test", "other.test"] {
                    let got = id(who);
                    let fits = |x: &Connection| x.matches_addrs(&local, &remote);
                    let named = |x: &Connection| matches!(x.remote_id, Identity::Id(_)) && x.remote_id.matches(&got);
                    let want = c.iter().position(|x| named(x) && fits(x));
                    assert_eq!(c.naming(&got, fits), want, "{who} from {p}");
                    let want_any = c.iter().position(|x| x.remote_id == Identity::Any && fits(x));
                    assert_eq!(c.taking_any_id(fits), want_any, "%any from {p}");
                }
            }
        };
        check(&c);
        for gone in ["n0", "n1", "n6", "n9", "n10"] {
            c.remove(gone).unwrap();
            check(&c);
        }
        assert!(c.remove("n0").is_err(), "removed already");
        assert!(c.index("n1").is_err());
        assert_eq!(c.index("n2").unwrap(), 2);
        // Loaded again: a new index, told where its counters were.
        assert_eq!(c.add(conn("n1", &[peers[0]], "%any")).unwrap(), (12, Some(1)));
        check(&c);
        assert_eq!(c.len(), 13);
    }
}
