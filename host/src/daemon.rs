//! `wasmsec run`: load the config, bring up the TUN device and sockets,
//! install the SAs into fresh ESP instances, and run the data path until
//! SIGINT/SIGTERM.
use std::net::{SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tracing::info;

use std::collections::HashMap;
use std::os::unix::net::{UnixDatagram, UnixListener};

use tracing::warn;

use crate::config::{Config, Encapsulation, Prefix, StartAction};
use crate::control::{ControlPlane, Trap};
use crate::dataplane::{Loop, Peer, SaSet, dp_link};
use crate::ike::{self, IkeInstance};
use crate::keystore::{EspAlgorithm, EspKey, Keystore};
use crate::runtime::{InboundSa, OutboundSa, Runtime, TrafficSelector};
use crate::stats::Stats;
use crate::sys::{self, RawEsp, Tun};
use wasmsec_wire::ip::Address;

/// A CIDR prefix as a WIT traffic selector (any protocol, any port).
fn to_wit_selector(p: &Prefix) -> TrafficSelector {
    let (start, end) = match p.address() {
        Address::V4(a) => {
            let v = u32::from_be_bytes(a);
            let mask = if p.len == 0 { 0 } else { u32::MAX << (32 - p.len) };
            ((v & mask).to_be_bytes().to_vec(), (v | !mask).to_be_bytes().to_vec())
        }
        Address::V6(a) => {
            let v = u128::from_be_bytes(a);
            let mask = if p.len == 0 { 0 } else { u128::MAX << (128 - p.len) };
            ((v & mask).to_be_bytes().to_vec(), (v | !mask).to_be_bytes().to_vec())
        }
    };
    TrafficSelector { ip_protocol: 0, start_port: 0, end_port: u16::MAX, start_address: start, end_address: end }
}

/// Where the components are: config, then `$WASMSEC_COMPONENTS`, then
/// `../components` beside the binary, then the system location.
pub fn components_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("WASMSEC_COMPONENTS") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("../components"))) {
        if p.join("esp.wasm").exists() {
            return p;
        }
    }
    PathBuf::from("/usr/lib/wasmsec/components")
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The SAs from `[[manual]]` blocks, with their keys put in the keystore.
fn manual_sas(cfg: &Config, base: &Path, ks: &Arc<Keystore>) -> Result<(Vec<OutboundSa>, Vec<InboundSa>, Vec<Peer>)> {
    let (mut out, mut inb, mut peers) = (Vec::new(), Vec::new(), Vec::new());
    for (i, m) in cfg.manual.iter().enumerate() {
        let at = format!("manual {:?}", m.name);
        let alg = EspAlgorithm::from_name(&m.algorithm).expect("validated");
        let load = |src: &crate::config::KeySource, which: &str| -> Result<u64> {
            let keymat = src.load(base).map_err(|e| anyhow::anyhow!("{at}: {which}: {e}"))?;
            let key = EspKey::new(alg, keymat).map_err(|e| anyhow::anyhow!("{at}: {which}: {e}"))?;
            Ok(ks.insert(key))
        };
        let local: Vec<_> = m.local_ts.iter().map(|s| to_wit_selector(&Prefix::parse(s).expect("validated"))).collect();
        let remote: Vec<_> =
            m.remote_ts.iter().map(|s| to_wit_selector(&Prefix::parse(s).expect("validated"))).collect();
        out.push(OutboundSa {
            spi: m.out_spi.0,
            key: load(&m.out_key, "out_key")?,
            peer: i as u32,
            esn: m.esn,
            next_seq: 1,
            pad_align: alg.pad_align(),
            local_ts: local.clone(),
            remote_ts: remote.clone(),
            limits: Default::default(),
        });
        inb.push(InboundSa {
            spi: m.in_spi.0,
            key: load(&m.in_key, "in_key")?,
            esn: m.esn,
            replay_window: m.replay_window,
            highest_seq: 0,
            local_ts: local,
            remote_ts: remote,
            limits: Default::default(),
        });
        peers.push(Peer { address: m.remote_address, port: m.remote_port, encapsulation: m.encapsulation });
        info!(
            tunnel = %m.name, peer = %m.remote_address, algorithm = alg.name(),
            out_spi = format_args!("{:#010x}", m.out_spi.0), in_spi = format_args!("{:#010x}", m.in_spi.0),
            encapsulation = ?m.encapsulation, esn = m.esn, local_ts = ?m.local_ts, remote_ts = ?m.remote_ts,
            "manual tunnel configured"
        );
    }
    Ok((out, inb, peers))
}

/// The IKE connections as the IKE component takes them, PSKs put in the
/// vault of `ike`.
fn load_connections(
    cfg: &Config,
    file: &Path,
    base: &Path,
    ike: &mut IkeInstance,
    force_encap: bool,
) -> Result<Vec<Trap>> {
    let mut traps = Vec::new();
    for c in &cfg.connection {
        let at = format!("{}: connection {:?}", file.display(), c.name);
        let psk = c.psk.load_secret(base).map_err(|e| anyhow::anyhow!("{at}: psk: {e}"))?;
        let psk = ike.store.data_mut().insert_psk(psk);
        let addr = |a: &std::net::IpAddr| match a {
            std::net::IpAddr::V4(v) => v.octets().to_vec(),
            std::net::IpAddr::V6(v) => v.octets().to_vec(),
        };
        let remote = c.remote_addrs().map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        let conn = ike::Connection {
            name: c.name.clone(),
            local_addrs: c.local_addrs.iter().map(addr).collect(),
            remote_addrs: remote.iter().map(addr).collect(),
            local_id: c.local_id.clone(),
            remote_id: c.remote_id.clone(),
            psk,
            ike_proposals: c.proposals.clone(),
            children: c
                .children
                .iter()
                .map(|ch| ike::ChildConfig {
                    name: ch.name.clone(),
                    local_ts: ch.local_ts.clone(),
                    remote_ts: ch.remote_ts.clone(),
                    esp_proposals: ch.esp_proposals.clone(),
                    rekey_time_ms: u64::from(ch.rekey_time) * 1000,
                    rekey_bytes: ch.rekey_bytes,
                    rekey_packets: ch.rekey_packets,
                    life_time_ms: u64::from(ch.life_time) * 1000,
                    life_bytes: ch.life_bytes,
                    life_packets: ch.life_packets,
                })
                .collect(),
            start_action: if c.start_action == StartAction::Start {
                ike::StartAction::Start
            } else {
                ike::StartAction::None
            },
            force_encap: c.encap || force_encap,
            nat_keepalive_ms: c.keepalive.saturating_mul(1000),
            rekey_time_ms: u64::from(c.rekey_time) * 1000,
            reauth_time_ms: u64::from(c.reauth_time) * 1000,
            dpd_delay_ms: c.dpd_delay.saturating_mul(1000),
            dpd_action: match c.dpd_action {
                crate::config::DpdAction::Clear | crate::config::DpdAction::Hold => ike::DpdAction::Clear,
                crate::config::DpdAction::Restart => ike::DpdAction::Restart,
            },
        };
        match ike.add_connection(&conn)? {
            Ok(warnings) => {
                for w in warnings {
                    warn!(connection = %c.name, "{w}");
                }
            }
            Err(e) => bail!("{at}: {e}"),
        }
        // `dpd_action = "hold"` is a trap that waits for traffic after a dead peer.
        let hold = c.dpd_action == crate::config::DpdAction::Hold && !remote.is_empty();
        if c.start_action == StartAction::Trap || hold {
            let remote = c
                .children
                .iter()
                .flat_map(|ch| ch.remote_ts.iter().map(|t| Prefix::parse(t).expect("validated")))
                .collect();
            traps.push(Trap { connection: c.name.clone(), remote });
        }
        info!(
            connection = %c.name, local_id = %c.local_id, remote_id = %c.remote_id, remote_addrs = ?c.remote_addrs,
            proposals = %c.proposals, start_action = ?c.start_action, children = c.children.len(),
            "IKE connection loaded"
        );
    }
    Ok(traps)
}

/// Run the daemon until a stop signal.
pub fn run(config_path: &Path, stats_file: Option<&Path>) -> Result<()> {
    let cfg = Config::load(config_path)?;
    let base = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    if !sys::is_root() {
        bail!("wasmsec run needs root (or CAP_NET_ADMIN and CAP_NET_RAW) for the TUN device and sockets");
    }
    sys::install_stop_handler();
    let dir = components_dir(cfg.runtime.components.as_deref());
    let esp_path = dir.join("esp.wasm");
    let ike_path = dir.join("ike.wasm");
    let with_ike = !cfg.connection.is_empty();
    let runtime =
        Arc::new(Runtime::with_ike(&esp_path, with_ike.then_some(ike_path.as_path())).with_context(|| {
            format!("cannot load the components from {} (build them with `cargo xtask build`)", dir.display())
        })?);
    let keystore = Arc::new(Keystore::new());
    let (out_sas, in_sas, peers) = manual_sas(&cfg, &base, &keystore)?;

    let out_set = SaSet { keystore: keystore.clone(), outbound: out_sas, inbound: vec![] };
    let in_set = SaSet { keystore: keystore.clone(), outbound: vec![], inbound: in_sas };
    let out_inst = out_set.instantiate(&runtime)?;
    let in_inst = in_set.instantiate(&runtime)?;

    let tun = Tun::open(&cfg.tunnel.name).with_context(|| format!("cannot create TUN device {}", cfg.tunnel.name))?;
    ip(&["link", "set", "dev", tun.name(), "mtu", &cfg.tunnel.mtu.to_string(), "up"])?;
    // Routes to every remote subnet go into the TUN device from the start:
    // traffic without an SA is then dropped and counted (and may trigger a
    // `trap` connection) instead of leaving in the clear.
    let routes = cfg.manual.iter().map(|m| (format!("manual {:?}", m.name), &m.remote_ts)).chain(
        cfg.connection
            .iter()
            .flat_map(|c| c.children.iter().map(move |ch| (format!("connection {:?}", c.name), &ch.remote_ts))),
    );
    for (what, remote_ts) in routes {
        for r in remote_ts {
            let p = Prefix::parse(r).expect("validated").to_string();
            let mut args = vec!["route", "replace", p.as_str(), "dev", tun.name()];
            let src = cfg.tunnel.source.map(|s| s.to_string());
            if let Some(s) = &src {
                args.extend(["src", s.as_str()]);
            }
            ip(&args).with_context(|| format!("{what}: route to {p}"))?;
        }
    }
    let udp = UdpSocket::bind(SocketAddrV4::new(cfg.network.listen, cfg.network.nat_t_port))
        .with_context(|| format!("cannot bind UDP {}:{}", cfg.network.listen, cfg.network.nat_t_port))?;
    udp.set_nonblocking(true)?;
    let want_raw = cfg.network.raw_esp || peers.iter().any(|p| p.encapsulation == Encapsulation::None);
    let raw = match RawEsp::open(cfg.network.listen) {
        Ok(r) if want_raw || with_ike => Some(r),
        Ok(_) => None,
        Err(e) if want_raw => return Err(e).context("cannot open raw ESP socket (IP protocol 50)"),
        Err(e) => {
            warn!(error = %e, "no raw ESP socket: IKE tunnels will always use UDP encapsulation");
            None
        }
    };
    let stats = Arc::new(Stats::default());
    info!(
        tun = tun.name(), mtu = cfg.tunnel.mtu, listen = %cfg.network.listen, port = cfg.network.nat_t_port,
        raw_esp = raw.is_some(), batch = cfg.runtime.batch, components = %dir.display(), ike = with_ike,
        "wasmsec data plane up"
    );

    let (out_link, out_inbox) = dp_link()?;
    let to_outbound = out_link.try_clone()?;
    let (in_link, in_inbox) = dp_link()?;
    let (up_dp, up_cp) = UnixDatagram::pair()?;
    up_dp.set_nonblocking(true)?;
    up_cp.set_nonblocking(true)?;
    let control = if with_ike {
        let mut ike = runtime.ike_instance(wasmsec_crypto::Vault::new(), keystore.clone())?;
        ike.store.data_mut().keylog = cfg.ike.keylog.clone();
        if let Some(k) = &cfg.ike.keylog {
            warn!(file = %k.display(), "IKE key export is on: this file holds secrets");
        }
        ike.store.data_mut().esp_keylog = cfg.ike.esp_keylog.is_some();
        if let Some(k) = &cfg.ike.esp_keylog {
            warn!(file = %k.display(), "ESP key export is on: this file holds secrets");
        }
        let traps = load_connections(&cfg, config_path, &base, &mut ike, raw.is_none())?;
        let sock500 = UdpSocket::bind(SocketAddrV4::new(cfg.network.listen, cfg.network.ike_port))
            .with_context(|| format!("cannot bind UDP {}:{}", cfg.network.listen, cfg.network.ike_port))?;
        sock500.set_nonblocking(true)?;
        let listener = match &cfg.control.socket {
            Some(p) => {
                let _ = std::fs::remove_file(p);
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d).ok();
                }
                let l =
                    UnixListener::bind(p).with_context(|| format!("cannot create control socket {}", p.display()))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        Some(ControlPlane {
            ike,
            sock500,
            sock4500: udp.try_clone()?,
            up: up_cp,
            outbound: out_link,
            inbound: in_link,
            listener,
            listen: cfg.network.listen,
            esp_keys: keystore.clone(),
            stats: stats.clone(),
            traps,
            replay_window: 1024,
            esp_keylog: cfg.ike.esp_keylog.clone(),
            deferred: HashMap::new(),
            lingering: Vec::new(),
        })
    } else {
        None
    };

    let outbound = Loop {
        runtime: runtime.clone(),
        sas: out_set,
        tun: tun.try_clone()?,
        udp: udp.try_clone()?,
        raw: raw.as_ref().map(RawEsp::try_clone).transpose()?,
        peers: peers.clone(),
        stats: stats.clone(),
        batch: cfg.runtime.batch,
        inbox: Some(out_inbox),
        up: Some(up_dp.try_clone()?),
        to_outbound: None,
        floats: HashMap::new(),
        sources: Vec::new(),
    };
    let inbound = Loop {
        runtime,
        sas: in_set,
        tun,
        udp,
        raw,
        peers,
        stats: stats.clone(),
        batch: cfg.runtime.batch,
        inbox: Some(in_inbox),
        up: Some(up_dp),
        to_outbound: Some(to_outbound),
        floats: HashMap::new(),
        sources: Vec::with_capacity(cfg.runtime.batch),
    };
    let t_out = std::thread::Builder::new().name("esp-out".into()).spawn(move || outbound.run_outbound(out_inst))?;
    let t_in = std::thread::Builder::new().name("esp-in".into()).spawn(move || inbound.run_inbound(in_inst))?;
    let t_ike = match control {
        Some(c) => Some(std::thread::Builder::new().name("ike".into()).spawn(move || c.run())?),
        None => None,
    };

    while !sys::stop_requested() {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(f) = stats_file {
            let _ = stats.write_file(f);
        }
        if t_out.is_finished() || t_in.is_finished() || t_ike.as_ref().is_some_and(|t| t.is_finished()) {
            sys::request_stop();
        }
    }
    let _ = t_out.join();
    let _ = t_in.join();
    if let Some(t) = t_ike {
        let _ = t.join();
    }
    if let Some(p) = &cfg.control.socket {
        let _ = std::fs::remove_file(p);
    }
    if let Some(f) = stats_file {
        stats.write_file(f).with_context(|| format!("writing {}", f.display()))?;
    }
    info!(stats = %stats.snapshot(), "wasmsec stopped");
    Ok(())
}
