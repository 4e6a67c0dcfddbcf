//! Routing domains: the daemon's own namespace with `[tunnel]`, and one per
//! `[[tenant]]`, each with its TUN device and routes. Domain 0 is the
//! daemon's; tenants get 1, 2, ... in config order at start, and a tenant
//! added by a reload gets the next number (numbers are never reused, so
//! the data path's guest group `domain * components + component` stays
//! where it is).
use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use tracing::info;

use crate::config::{self, Config};
use crate::sys::{self, Tun};

/// Where a domain's inner traffic goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    /// The network namespace (none: the daemon's own).
    pub netns: Option<String>,
    /// Its TUN device.
    pub tun: String,
    /// The source addresses set on its routes (one per family).
    pub source: config::Sources,
    /// The TUN device's MTU.
    pub mtu: u16,
    /// Ask for TUN offloads (`[tunnel] offload`).
    pub offload: bool,
}

impl Domain {
    /// The daemon's own domain.
    pub fn own(cfg: &Config) -> Domain {
        Domain {
            netns: None,
            tun: cfg.tunnel.name.clone(),
            source: cfg.tunnel.source,
            mtu: cfg.tunnel.mtu,
            offload: cfg.tunnel.offload,
        }
    }

    /// A tenant's domain.
    pub fn of_tenant(cfg: &Config, t: &config::Tenant) -> Domain {
        Domain {
            netns: Some(t.netns.clone()),
            tun: t.tun_name(),
            source: t.source,
            mtu: t.mtu.unwrap_or(cfg.tunnel.mtu),
            offload: cfg.tunnel.offload,
        }
    }

    /// `ip` in this domain's namespace.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        match &self.netns {
            None => sys::ip(args),
            Some(ns) => sys::ip(&[&["-n", ns.as_str()], args].concat()),
        }
    }

    /// Its TUN device, up, in its namespace. A tenant's device is created
    /// in the daemon's namespace and moved; the descriptor keeps working
    /// across the move, and closing it removes the device wherever it is.
    pub fn open(&self, what: &str) -> Result<Tun> {
        if let Some(ns) = &self.netns
            && !Path::new("/run/netns").join(ns).exists()
        {
            bail!("{what}: network namespace {ns:?} does not exist (create it first: ip netns add {ns})");
        }
        let tun = Tun::open(&self.tun, self.offload)
            .with_context(|| format!("{what}: cannot create TUN device {}", self.tun))?;
        if let Some(ns) = &self.netns {
            sys::ip(&["link", "set", "dev", &self.tun, "netns", ns])
                .with_context(|| format!("{what}: cannot move TUN device {} into namespace {ns}", self.tun))?;
            info!(tenant = %what, netns = %ns, tun = %self.tun, "tenant routing domain up");
        }
        // No IPv6 link-local address: the kernel would send router
        // solicitations and MLD reports from it into the tunnel, where no
        // SA covers them (counted as no_policy drops). Routes into the TUN
        // device need no address of its own.
        self.ip(&["link", "set", "dev", &self.tun, "addrgenmode", "none", "mtu", &self.mtu.to_string(), "up"])
            .with_context(|| what.to_string())?;
        Ok(tun)
    }

    /// Routes into the TUN device to the remote subnets of `wanted`, each
    /// given with whose it is (for the errors): traffic without an SA is
    /// then dropped and counted instead of leaving in the clear. One `ip
    /// -batch` for them all ([`sys::ip_batch`]); a subnet given twice is
    /// routed once. Every route is tried, and the failures come back, each
    /// as `WHOSE: route to SUBNET: ip ...: ERROR`.
    pub fn routes<'a>(&self, wanted: impl IntoIterator<Item = (String, &'a config::Prefix)>) -> Result<Vec<String>> {
        let (mut lines, mut whose, mut seen) = (Vec::new(), Vec::new(), HashSet::new());
        for (who, p) in wanted {
            let line = route_args(p, &self.tun, self.source).join(" ");
            if seen.insert(line.clone()) {
                lines.push(line);
                whose.push((who, p));
            }
        }
        let failed = sys::ip_batch(self.netns.as_deref(), &lines)?;
        Ok(failed
            .into_iter()
            .map(|(i, e)| format!("{}: route to {}: ip {}: {e}", whose[i].0, whose[i].1, lines[i]))
            .collect())
    }
}

/// The remote subnets of a connection's children, each with whose it is,
/// for [`Domain::routes`].
pub fn connection_routes(c: &config::Connection) -> impl Iterator<Item = (String, &config::Prefix)> {
    c.children.iter().flat_map(|ch| &ch.remote_ts).map(move |p| (format!("connection {:?}", c.name.get_ref()), p))
}

/// `ip` arguments for the route to `p` into TUN device `tun`: with `src`
/// the source of `p`'s family, if `source` has one; otherwise the kernel
/// picks the source of what the gateway itself sends there (until
/// 2026-12-04 an IPv4 source was put on IPv6 routes too, `ip` refused it,
/// and a connection with an IPv6 subnet stopped the daemon at start).
fn route_args(p: &config::Prefix, tun: &str, source: config::Sources) -> Vec<String> {
    let mut args = vec!["route".to_string(), "replace".into(), p.to_string(), "dev".into(), tun.into()];
    if let Some(s) = source.of_family(&p.addr) {
        args.extend(["src".to_string(), s.to_string()]);
    }
    args
}

/// The domains in force, by number.
#[derive(Debug, Clone)]
pub struct Domains {
    /// By number; a removed tenant's is `None`.
    pub list: Vec<Option<Domain>>,
    /// Each tenant's number.
    pub by_tenant: HashMap<String, usize>,
    /// The `[[tenant]]` sections in force.
    pub sections: Vec<config::Tenant>,
}

impl Domains {
    /// The domains of the config the daemon starts with (`Config::domain_of` numbering).
    pub fn at_start(cfg: &Config) -> Domains {
        let mut list = vec![Some(Domain::own(cfg))];
        let mut by_tenant = HashMap::new();
        for t in &cfg.tenant {
            by_tenant.insert(t.name.get_ref().clone(), list.len());
            list.push(Some(Domain::of_tenant(cfg, t)));
        }
        Domains { list, by_tenant, sections: cfg.tenant.clone() }
    }

    /// The number of a connection's domain (0: no tenant, or one unknown).
    pub fn of(&self, c: &config::Connection) -> usize {
        c.tenant.as_ref().and_then(|t| self.by_tenant.get(t)).copied().unwrap_or(0)
    }

    /// The domain a connection's routes go to.
    pub fn for_connection(&self, c: &config::Connection) -> Option<&Domain> {
        self.list.get(self.of(c)).and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_takes_the_tunnel_source_only_of_its_own_family() {
        let route = |p: &str, v4: Option<&str>, v6: Option<&str>| {
            let p = config::Prefix::parse(p).unwrap();
            let ip = |a: Option<&str>| a.map(|a| a.parse().unwrap());
            route_args(&p, "wsec0", config::Sources { v4: ip(v4), v6: ip(v6) }).join(" ")
        };
        let (v4, v6) = (Some("198.18.2.1"), Some("fd00:2::1"));
        assert_eq!(route("198.18.1.0/24", v4, None), "route replace 198.18.1.0/24 dev wsec0 src 198.18.2.1");
        assert_eq!(route("fd00:1::/64", v4, None), "route replace fd00:1::/64 dev wsec0");
        assert_eq!(route("fd00:1::/64", None, v6), "route replace fd00:1::/64 dev wsec0 src fd00:2::1");
        assert_eq!(route("198.18.1.0/24", None, v6), "route replace 198.18.1.0/24 dev wsec0");
        assert_eq!(route("fd00:1::/64", v4, v6), "route replace fd00:1::/64 dev wsec0 src fd00:2::1");
        assert_eq!(route("198.18.1.0/24", v4, v6), "route replace 198.18.1.0/24 dev wsec0 src 198.18.2.1");
        assert_eq!(route("198.18.1.0/24", None, None), "route replace 198.18.1.0/24 dev wsec0");
    }
}
