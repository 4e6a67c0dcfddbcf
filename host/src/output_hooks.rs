//! `[network] raw_esp_send = "auto"`: would the IP layer do more with an
//! outgoing ESP datagram than route it? If not, the packet socket
//! (`datapath/link_send.rs`) sends it as the IP layer would, and faster;
//! if so, or if that cannot be told, the IP socket sends it, so that
//! nothing the operator set up is bypassed. Looked at once a second:
//!
//! - an nftables base chain of family `ip` or `inet` on the `output` or
//!   `postrouting` hook (iptables-nft's too): it could filter, mark,
//!   count or NAT the datagram;
//! - a table of the legacy iptables in this namespace
//!   (`ip_tables_names` in `/proc/thread-self/net`): each hooks the output
//!   path;
//! - an IPv4 routing rule on `ipproto` or `tos`/`dscp`: the route question
//!   the packet socket asks (`nexthop`) cannot carry those (the kernel
//!   answers only TCP, UDP and ICMP), so its table might differ;
//! - a BPF program on the cgroup's egress (`BPF_CGROUP_INET_EGRESS`, such
//!   as systemd's `IPAddressDeny=` and `IPAccounting=`), which the IP
//!   layer runs on output.
//!
//! The `netdev` egress hook, tc and the qdiscs see both paths alike.
use std::io;
use std::path::PathBuf;

use crate::netlink::{self, Asker, NLM_F_DUMP, NLM_F_REQUEST};

// nfnetlink (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
/// nfgenmsg, after nlmsghdr.
const NFGENMSG: usize = 4;
// Routing rules (linux/fib_rules.h).
const RTM_NEWRULE: u16 = 32;
const RTM_GETRULE: u16 = 34;
const FRA_IP_PROTO: u16 = 22;
const FRA_DSCP: u16 = 25;
/// fib_rule_hdr, after nlmsghdr.
const FIB_RULE_HDR: usize = 12;

/// The questions, on sockets kept open.
pub struct OutputHooks {
    /// None: this kernel has no nfnetlink, so no nftables either.
    nft: Option<Asker>,
    route: Asker,
}

impl OutputHooks {
    pub fn open() -> io::Result<OutputHooks> {
        let nft = match Asker::open(libc::NETLINK_NETFILTER) {
            Ok(a) => Some(a),
            Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => None,
            Err(e) => return Err(e),
        };
        Ok(OutputHooks { nft, route: Asker::open(libc::NETLINK_ROUTE)? })
    }

    /// Why raw ESP must go through the IP layer now (what hooks its output
    /// path, or why that cannot be told), or `None`.
    pub fn reason(&mut self) -> Option<String> {
        self.find().unwrap_or_else(|e| Some(format!("cannot tell what hooks the output path: {e}")))
    }

    fn find(&mut self) -> io::Result<Option<String>> {
        if let Some(r) = self.nft_chain()? {
            return Ok(Some(r));
        }
        if let Some(r) = legacy_tables() {
            return Ok(Some(r));
        }
        if let Some(r) = self.rule()? {
            return Ok(Some(r));
        }
        if let Some(dir) = cgroup2_dir() {
            let n = crate::sys::cgroup_egress_programs(&dir)?;
            if n > 0 {
                return Ok(Some(format!("{n} BPF program(s) on cgroup egress ({})", dir.display())));
            }
        }
        Ok(None)
    }

    fn nft_chain(&mut self) -> io::Result<Option<String>> {
        let Some(nft) = &mut self.nft else { return Ok(None) };
        let mut m = netlink::request(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN, NLM_F_REQUEST | NLM_F_DUMP);
        // nfgenmsg: every family, version 0, resource 0.
        m.extend_from_slice(&[0, 0, 0, 0]);
        let mut found = None;
        let r = nft.dump(m, |kind, payload| {
            if found.is_none() && kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN {
                found = output_chain(payload);
            }
        });
        match r {
            Ok(()) => Ok(found),
            // No nf_tables in this kernel.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn rule(&mut self) -> io::Result<Option<String>> {
        let mut m = netlink::request(RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP);
        m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut found = None;
        self.route.dump(m, |kind, payload| {
            if found.is_none() && kind == RTM_NEWRULE {
                found = unseen_rule(payload);
            }
        })?;
        Ok(found)
    }
}

/// An `ip`/`inet` base chain on the output or postrouting hook, named.
fn output_chain(payload: &[u8]) -> Option<String> {
    let family = match *payload.first()? {
        NFPROTO_IPV4 => "ip",
        NFPROTO_INET => "inet",
        _ => return None,
    };
    let (mut table, mut name, mut hook) = ("", "", None);
    for (kind, data) in netlink::attrs(payload.get(NFGENMSG..)?) {
        match kind {
            NFTA_CHAIN_TABLE => table = c_str(data),
            NFTA_CHAIN_NAME => name = c_str(data),
            NFTA_CHAIN_HOOK => {
                hook = netlink::attrs(data)
                    .find(|(k, _)| *k == NFTA_HOOK_HOOKNUM)
                    .and_then(|(_, d)| Some(u32::from_be_bytes(d.try_into().ok()?)))
            }
            _ => {}
        }
    }
    let hook = match hook? {
        NF_INET_LOCAL_OUT => "output",
        NF_INET_POST_ROUTING => "postrouting",
        _ => return None,
    };
    Some(format!("nftables chain {family} {table} {name} on the {hook} hook"))
}

/// A rule the route question cannot match as the IP socket's lookup does.
fn unseen_rule(payload: &[u8]) -> Option<String> {
    let tos = *payload.get(3)?;
    if tos != 0 {
        return Some(format!("an ip rule on tos {tos:#04x}"));
    }
    netlink::attrs(payload.get(FIB_RULE_HDR..)?).find_map(|(kind, _)| match kind {
        FRA_IP_PROTO => Some("an ip rule on ipproto".to_string()),
        FRA_DSCP => Some("an ip rule on dscp".to_string()),
        _ => None,
    })
}

/// A NUL-terminated name.
fn c_str(data: &[u8]) -> &str {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    std::str::from_utf8(&data[..end]).unwrap_or("?")
}

/// The legacy iptables tables of this namespace, if any.
fn legacy_tables() -> Option<String> {
    let names = std::fs::read_to_string("/proc/thread-self/net/ip_tables_names").ok()?;
    let names: Vec<&str> = names.split_whitespace().collect();
    (!names.is_empty()).then(|| format!("iptables (legacy) tables: {}", names.join(", ")))
}

/// This process's cgroup v2 directory, if it has one.
fn cgroup2_dir() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_dir_of(&own, &mounts)
}

/// From `/proc/self/cgroup` (the `0::` line) and `/proc/self/mountinfo`
/// (a `cgroup2` mount: its root within the hierarchy and mount point).
fn cgroup2_dir_of(own: &str, mounts: &str) -> Option<PathBuf> {
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    mounts.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = before.split(' ').collect();
        let (root, point) = (*f.get(3)?, *f.get(4)?);
        let rel = path.strip_prefix(root).unwrap_or(path).trim_start_matches('/');
        Some(PathBuf::from(point).join(rel))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::attr;

    fn chain(family: u8, hooknum: Option<u32>) -> Vec<u8> {
        let mut p = vec![family, 0, 0, 0];
        attr(&mut p, NFTA_CHAIN_TABLE, b"filter\0");
        attr(&mut p, NFTA_CHAIN_NAME, b"out\0");
        if let Some(h) = hooknum {
            let mut nested = Vec::new();
            attr(&mut nested, NFTA_HOOK_HOOKNUM, &h.to_be_bytes());
            attr(&mut nested, 2, &0i32.to_be_bytes());
            attr(&mut p, NFTA_CHAIN_HOOK | 0x8000, &nested);
        }
        p
    }

    #[test]
    fn only_ip_and_inet_base_chains_on_the_output_path_count() {
        assert_eq!(
            output_chain(&chain(NFPROTO_INET, Some(3))).unwrap(),
            "nftables chain inet filter out on the output hook"
        );
        assert!(output_chain(&chain(NFPROTO_IPV4, Some(4))).unwrap().ends_with("postrouting hook"));
        assert_eq!(output_chain(&chain(NFPROTO_IPV4, Some(0))), None, "prerouting");
        assert_eq!(output_chain(&chain(NFPROTO_IPV4, Some(1))), None, "input");
        assert_eq!(output_chain(&chain(NFPROTO_IPV4, None)), None, "a regular chain");
        assert_eq!(output_chain(&chain(10, Some(3))), None, "ip6");
        assert_eq!(output_chain(&chain(5, Some(3))), None, "netdev");
        assert_eq!(output_chain(&[]), None);
    }

    #[test]
    fn rules_on_what_a_route_question_cannot_carry_count() {
        let hdr = [libc::AF_INET as u8, 0, 0, 0, 100, 0, 0, 1, 0, 0, 0, 0];
        let mut plain = hdr.to_vec();
        attr(&mut plain, 6, &100u32.to_ne_bytes()); // priority
        attr(&mut plain, 2, &[10, 0, 0, 1]); // from
        assert_eq!(unseen_rule(&plain), None);
        let mut proto = plain.clone();
        attr(&mut proto, FRA_IP_PROTO, &[50]);
        assert_eq!(unseen_rule(&proto).unwrap(), "an ip rule on ipproto");
        let mut tos = hdr.to_vec();
        tos[3] = 0x10;
        assert_eq!(unseen_rule(&tos).unwrap(), "an ip rule on tos 0x10");
    }

    #[test]
    fn the_cgroup2_directory_is_found_under_its_mount() {
        let mounts = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      36 25 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let own = "4:memory:/x\n0::/system.slice/wasmsec.service\n";
        assert_eq!(
            cgroup2_dir_of(own, mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified/system.slice/wasmsec.service"))
        );
        // A container's view: the mount's root is its own cgroup.
        let mounts = "50 40 0:30 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_dir_of("0::/kubepods/pod1\n", mounts), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_dir_of("1:name=systemd:/\n", mounts), None, "no v2 line");
        assert_eq!(cgroup2_dir_of("0::/\n", ""), None, "no v2 mount");
    }

    /// In a network namespace of this thread's own: nothing, then an
    /// nftables output chain, then a rule on ipproto.
    #[test]
    fn the_kernel_tells_what_hooks_the_output_path() {
        std::thread::spawn(|| {
            crate::sys::unshare_net().expect("a network namespace for this thread (root)");
            let mut h = OutputHooks::open().expect("netlink sockets");
            let run = |cmd: &str, args: &str| {
                let ok = std::process::Command::new(cmd).args(args.split(' ')).status().unwrap().success();
                assert!(ok, "{cmd} {args}");
            };
            // The cgroup check is the machine's, not the namespace's.
            let cgroup = cgroup2_dir().map(|d| crate::sys::cgroup_egress_programs(&d));
            let clean = h.reason();
            if matches!(cgroup, None | Some(Ok(0))) {
                assert_eq!(clean, None);
            }
            run("nft", "add table inet wsh");
            run("nft", "add chain inet wsh pre { type filter hook prerouting priority 0 ; }");
            assert_eq!(h.reason(), clean, "prerouting is not the output path");
            run("nft", "add chain inet wsh post { type nat hook postrouting priority 100 ; }");
            assert_eq!(h.reason().unwrap(), "nftables chain inet wsh post on the postrouting hook");
            run("nft", "delete table inet wsh");
            assert_eq!(h.reason(), clean);
            run("ip", "rule add ipproto 50 table 100");
            assert_eq!(h.reason().unwrap(), "an ip rule on ipproto");
        })
        .join()
        .unwrap();
    }
}
