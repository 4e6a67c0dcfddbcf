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

use crate::config::{Config, Encapsulation, Prefix};
use crate::dataplane::{Loop, Peer, SaSet};
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
            let mask = if p.len == 0 {
                0
            } else {
                u32::MAX << (32 - p.len)
            };
            (
                (v & mask).to_be_bytes().to_vec(),
                (v | !mask).to_be_bytes().to_vec(),
            )
        }
        Address::V6(a) => {
            let v = u128::from_be_bytes(a);
            let mask = if p.len == 0 {
                0
            } else {
                u128::MAX << (128 - p.len)
            };
            (
                (v & mask).to_be_bytes().to_vec(),
                (v | !mask).to_be_bytes().to_vec(),
            )
        }
    };
    TrafficSelector {
        ip_protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start_address: start,
        end_address: end,
    }
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
    if let Some(p) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("../components")))
    {
        if p.join("esp.wasm").exists() {
            return p;
        }
    }
    PathBuf::from("/usr/lib/wasmsec/components")
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The SAs from `[[manual]]` blocks, with their keys put in the keystore.
fn manual_sas(
    cfg: &Config,
    base: &Path,
    ks: &Arc<Keystore>,
) -> Result<(Vec<OutboundSa>, Vec<InboundSa>, Vec<Peer>)> {
    let (mut out, mut inb, mut peers) = (Vec::new(), Vec::new(), Vec::new());
    for (i, m) in cfg.manual.iter().enumerate() {
        let at = format!("manual {:?}", m.name);
        let alg = EspAlgorithm::from_name(&m.algorithm).expect("validated");
        let load = |src: &crate::config::KeySource, which: &str| -> Result<u64> {
            let keymat = src
                .load(base)
                .map_err(|e| anyhow::anyhow!("{at}: {which}: {e}"))?;
            let key =
                EspKey::new(alg, keymat).map_err(|e| anyhow::anyhow!("{at}: {which}: {e}"))?;
            Ok(ks.insert(key))
        };
        let local: Vec<_> = m
            .local_ts
            .iter()
            .map(|s| to_wit_selector(&Prefix::parse(s).expect("validated")))
            .collect();
        let remote: Vec<_> = m
            .remote_ts
            .iter()
            .map(|s| to_wit_selector(&Prefix::parse(s).expect("validated")))
            .collect();
        out.push(OutboundSa {
            spi: m.out_spi.0,
            key: load(&m.out_key, "out_key")?,
            peer: i as u32,
            esn: m.esn,
            next_seq: 1,
            pad_align: 4,
            local_ts: local.clone(),
            remote_ts: remote.clone(),
        });
        inb.push(InboundSa {
            spi: m.in_spi.0,
            key: load(&m.in_key, "in_key")?,
            esn: m.esn,
            replay_window: m.replay_window,
            highest_seq: 0,
            local_ts: local,
            remote_ts: remote,
        });
        peers.push(Peer {
            address: m.remote_address,
            port: m.remote_port,
            encapsulation: m.encapsulation,
        });
        info!(
            tunnel = %m.name, peer = %m.remote_address, algorithm = alg.name(),
            out_spi = format_args!("{:#010x}", m.out_spi.0), in_spi = format_args!("{:#010x}", m.in_spi.0),
            encapsulation = ?m.encapsulation, esn = m.esn, local_ts = ?m.local_ts, remote_ts = ?m.remote_ts,
            "manual tunnel configured"
        );
    }
    Ok((out, inb, peers))
}

/// Run the daemon until a stop signal.
pub fn run(config_path: &Path, stats_file: Option<&Path>) -> Result<()> {
    let cfg = Config::load(config_path)?;
    let base = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    if !sys::is_root() {
        bail!(
            "wasmsec run needs root (or CAP_NET_ADMIN and CAP_NET_RAW) for the TUN device and sockets"
        );
    }
    sys::install_stop_handler();
    let dir = components_dir(cfg.runtime.components.as_deref());
    let esp_path = dir.join("esp.wasm");
    let runtime = Arc::new(Runtime::new(&esp_path).with_context(|| {
        format!(
            "cannot load the ESP component from {} (build it with `cargo xtask build`)",
            esp_path.display()
        )
    })?);
    let keystore = Arc::new(Keystore::new());
    let (out_sas, in_sas, peers) = manual_sas(&cfg, &base, &keystore)?;

    let out_set = SaSet {
        keystore: keystore.clone(),
        outbound: out_sas,
        inbound: vec![],
    };
    let in_set = SaSet {
        keystore: keystore.clone(),
        outbound: vec![],
        inbound: in_sas,
    };
    let out_inst = out_set.instantiate(&runtime)?;
    let in_inst = in_set.instantiate(&runtime)?;

    let tun = Tun::open(&cfg.tunnel.name)
        .with_context(|| format!("cannot create TUN device {}", cfg.tunnel.name))?;
    ip(&[
        "link",
        "set",
        "dev",
        tun.name(),
        "mtu",
        &cfg.tunnel.mtu.to_string(),
        "up",
    ])?;
    for m in &cfg.manual {
        for r in &m.remote_ts {
            let p = Prefix::parse(r).expect("validated").to_string();
            let mut args = vec!["route", "replace", p.as_str(), "dev", tun.name()];
            let src = cfg.tunnel.source.map(|s| s.to_string());
            if let Some(s) = &src {
                args.extend(["src", s.as_str()]);
            }
            ip(&args).with_context(|| format!("manual {:?}: route to {p}", m.name))?;
        }
    }
    let udp = UdpSocket::bind(SocketAddrV4::new(
        cfg.network.listen,
        cfg.network.nat_t_port,
    ))
    .with_context(|| {
        format!(
            "cannot bind UDP {}:{}",
            cfg.network.listen, cfg.network.nat_t_port
        )
    })?;
    udp.set_nonblocking(true)?;
    let want_raw =
        cfg.network.raw_esp || peers.iter().any(|p| p.encapsulation == Encapsulation::None);
    let raw = if want_raw {
        Some(
            RawEsp::open(cfg.network.listen)
                .context("cannot open raw ESP socket (IP protocol 50)")?,
        )
    } else {
        None
    };
    let stats = Arc::new(Stats::default());
    info!(
        tun = tun.name(), mtu = cfg.tunnel.mtu, listen = %cfg.network.listen, port = cfg.network.nat_t_port,
        raw_esp = raw.is_some(), batch = cfg.runtime.batch, component = %esp_path.display(),
        "wasmsec data plane up"
    );

    let outbound = Loop {
        runtime: runtime.clone(),
        sas: out_set,
        tun: tun.try_clone()?,
        udp: udp.try_clone()?,
        raw: raw.as_ref().map(RawEsp::try_clone).transpose()?,
        peers: peers.clone(),
        stats: stats.clone(),
        batch: cfg.runtime.batch,
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
    };
    let t_out = std::thread::Builder::new()
        .name("esp-out".into())
        .spawn(move || outbound.run_outbound(out_inst))?;
    let t_in = std::thread::Builder::new()
        .name("esp-in".into())
        .spawn(move || inbound.run_inbound(in_inst))?;

    while !sys::stop_requested() {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(f) = stats_file {
            let _ = stats.write_file(f);
        }
        if t_out.is_finished() || t_in.is_finished() {
            sys::request_stop();
        }
    }
    let _ = t_out.join();
    let _ = t_in.join();
    if let Some(f) = stats_file {
        stats
            .write_file(f)
            .with_context(|| format!("writing {}", f.display()))?;
    }
    info!(stats = %stats.snapshot(), "wasmsec stopped");
    Ok(())
}
