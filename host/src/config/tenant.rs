//! `[[tenant]]`: one customer of a multi-tenant gateway. A tenant has its
//! own routing domain (a network namespace holding its own TUN device and
//! routes, so two tenants may use the same LAN prefix), its own ESP guest
//! instances, its own policy module, and the connections that name it.
use super::values::Sources;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// Tenants one daemon serves. Each holds two ESP guest instances (one
/// per direction) of a pool sized for `wasm::sandbox::POOL_TENANTS`; the
/// limit here is what the data path is proven with (a TUN device and two
/// descriptors per tenant, test-tenants-100), not the pools.
pub const MAX_TENANTS: usize = 500;

/// A tenant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Its name: 1-32 of `a-z 0-9 - _`, unique. Metrics carry it as the
    /// `tenant` label and a policy module's grant names it.
    pub name: Spanned<String>,
    /// The network namespace (a name `ip netns` knows, under /run/netns)
    /// that is this tenant's routing domain. It must exist before the
    /// daemon starts; the daemon moves the tenant's TUN device into it and
    /// routes the remote subnets of the tenant's connections there.
    pub netns: String,
    /// The TUN device's name, unique among tenants and `[tunnel] name`
    /// (it is created in the daemon's namespace, then moved). Default:
    /// `wst-` and the tenant's name, cut to 15 bytes.
    #[serde(default)]
    pub tun: Option<String>,
    /// The TUN device's MTU (default: `[tunnel] mtu`).
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Source address for packets the tenant's namespace itself sends into
    /// the tunnel (set on its routes); an address it already has. One per
    /// family at most (`Sources`).
    #[serde(default)]
    pub source: Sources,
    /// The tenant's policy module (relative to the config file), asked for
    /// the peers of the tenant's connections instead of `[policy] module`.
    /// Watched as `[policy] watch` says.
    #[serde(default)]
    pub policy: Option<PathBuf>,
}

impl Tenant {
    /// The TUN device's name.
    pub fn tun_name(&self) -> String {
        self.tun.clone().unwrap_or_else(|| format!("wst-{}", self.name.get_ref()).chars().take(15).collect())
    }
}

/// Why a tenant name is not usable, if it is not.
pub fn bad_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    (!ok).then(|| format!("tenant name {name:?} must be 1-32 of a-z, 0-9, '-' and '_'"))
}
