//! `wasmsec run`: load the config, bring up the TUN device and sockets,
//! install the manual SAs into fresh ESP instances, start the IKE engine
//! for the connections, and run until SIGINT/SIGTERM.
use std::collections::HashMap;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy::watch::Reloader;
use anyhow::{Context, Result, bail};
use tracing::{debug, info, warn};

use crate::config::{self, Config, Encapsulation, RawEspSend};
use crate::control::ControlPlane;
use crate::control::children::Children;
use crate::control::connections::load_connections;
use crate::control::domains::{Domains, connection_routes};
use crate::control::sockets::IkeSockets;
use crate::datapath::channel::{Report, SaCommand, Sender, channel};
use crate::datapath::gro::GroRecv;
use crate::datapath::group::{Group, Groups};
use crate::datapath::gso::GsoSend;
use crate::datapath::guard::GuestGuard;
use crate::datapath::link_send::LinkEsp;
use crate::datapath::tos::{self, BySa};
use crate::datapath::{Kept, Loop, Peer, Peers, SaSet};
use crate::keys::iv_reservation::{self, IvReservation};
use crate::keys::{EspKey, Keystore};
use crate::stats::Stats;
use crate::sys::{self, RawEsp, Tun};
use crate::wasm::selectors::SaSelectors;

/// Send and receive buffer of the ESP-in-UDP socket.
const SOCKET_BUFFER: usize = 4 << 20;
use crate::wasm::Runtime;
use crate::wasm::esp::{InboundSa, OutboundSa, SaLimits};

/// Where the components are: config, then `$WASMSEC_COMPONENTS`, then
/// `../components` beside the binary, then the system location.
pub fn components_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("WASMSEC_COMPONENTS") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("../components")))
        && p.join("esp.wasm").exists()
    {
        return p;
    }
    PathBuf::from("/usr/lib/wasmsec/components")
}

/// The components a test or benchmark runs: [`components_dir`]`(None)` if
/// it holds them, else this checkout's `target/components`.
pub fn built_components_dir() -> PathBuf {
    let dir = components_dir(None);
    if dir.join("esp.wasm").exists() { dir } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/components") }
}

/// The SAs from `[[manual]]` blocks, with their keys put in the keystore.
struct ManualSas {
    outbound: Vec<Kept<OutboundSa>>,
    inbound: Vec<Kept<InboundSa>>,
    peers: Vec<Peer>,
    /// The guest group of each tunnel, in order.
    groups: Vec<usize>,
}

/// Manual keys are the same after every restart, so every IV they seal
/// with is reserved on disk first ([`IvReservation`]), and no key material
/// may serve two SAs (their IV counters would collide: nonce reuse).
/// With `reserve` false (`wasmsec check`) the keys are read and checked but
/// no IV is reserved.
fn manual_sas(cfg: &Config, base: &Path, ks: &Arc<Keystore>, reserve: bool) -> Result<ManualSas> {
    let mut sas = ManualSas { outbound: Vec::new(), inbound: Vec::new(), peers: Vec::new(), groups: Vec::new() };
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, m) in cfg.manual.iter().enumerate() {
        let at = format!("manual {:?}", m.name.get_ref());
        let alg = m.algorithm;
        let mut load = |src: &config::KeySource, which: &str, sealing: bool| -> Result<u64> {
            let keymat = src.load(base).map_err(|e| anyhow::anyhow!("{at}: {which}: {e}"))?;
            let name = iv_reservation::state_name(&keymat);
            if let Some(first) = seen.insert(name.clone(), format!("{which} of {at}")) {
                bail!(
                    "{at}: {which} is the same key material as the {first}: every manual SA needs its own key \
                     (one key for two SAs repeats AES-GCM/ChaCha20 nonces, which reveals the traffic)"
                );
            }
            let mut key = EspKey::new(alg, keymat).map_err(|e| anyhow::anyhow!("{at}: {which}: {e}"))?;
            if sealing && reserve {
                let (r, first) = IvReservation::open(&cfg.runtime.state_dir, &name)
                    .with_context(|| format!("{at}: {which}: reserving IVs in [runtime] state_dir"))?;
                key = key.with_reservation(r, first);
            }
            Ok(ks.insert(key))
        };
        let local: Vec<_> = m.local_ts.iter().map(config::Prefix::selector).collect();
        let remote: Vec<_> = m.remote_ts.iter().map(config::Prefix::selector).collect();
        let selectors = SaSelectors::of(&local, &remote)
            .ok_or_else(|| anyhow::anyhow!("{at}: local_ts or remote_ts is not a selector the data path takes"))?;
        // Named by the inbound SPI, as a negotiated CHILD SA's outbound half
        // is (`Kept::wire_spi`): unique among tunnels, and the data path's
        // one name for the pair.
        let out = OutboundSa {
            spi: m.in_spi.0,
            key: load(&m.out_key, "out_key", true)?,
            peer: i as u32,
            esn: m.esn,
            next_seq: 1,
            pad_align: alg.pad_align(),
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            limits: SaLimits::default(),
        };
        sas.outbound.push(Kept::outbound(out, m.out_spi.0, selectors.clone()).with_tos(m.tos()));
        let inb = InboundSa {
            spi: m.in_spi.0,
            key: load(&m.in_key, "in_key", false)?,
            esn: m.esn,
            replay_window: m.replay_window,
            highest_seq: 0,
            replay_missing: 0,
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            limits: SaLimits::default(),
        };
        sas.inbound.push(Kept::new(inb, selectors).with_tos(m.tos()));
        let source = std::net::Ipv4Addr::UNSPECIFIED;
        sas.peers.push(Peer { address: m.remote_address, port: m.remote_port, encapsulation: m.encapsulation, source });
        info!(
            tunnel = %m.name.get_ref(), peer = %m.remote_address, algorithm = alg.name(),
            out_spi = format_args!("{:#010x}", m.out_spi.0), in_spi = format_args!("{:#010x}", m.in_spi.0),
            encapsulation = ?m.encapsulation, esn = m.esn, "manual tunnel configured"
        );
    }
    Ok(sas)
}

/// The TUN devices of the routing domains (`Domains::at_start` order), up,
/// with a route to every remote subnet. Routes exist from the start:
/// traffic without an SA is then dropped and counted (and may trigger a
/// `trap` connection) instead of leaving in the clear.
fn open_tuns(cfg: &Config) -> Result<Vec<Tun>> {
    let domains = Domains::at_start(cfg);
    let mut tuns = Vec::new();
    for (i, d) in domains.list.iter().flatten().enumerate() {
        let what = match i {
            0 => "[tunnel]".to_string(),
            _ => format!("tenant {:?}", cfg.tenant[i - 1].name.get_ref()),
        };
        let tun = d.open(&what)?;
        let mut wanted = Vec::new();
        if i == 0 {
            for m in &cfg.manual {
                wanted.extend(m.remote_ts.iter().map(|p| (format!("manual {:?}", m.name.get_ref()), p)));
            }
        }
        for c in cfg.connection.iter().filter(|c| domains.of(c) == i) {
            wanted.extend(connection_routes(c));
        }
        let failed = d.routes(wanted).with_context(|| format!("{what}: routes"))?;
        if let Some(first) = failed.first() {
            let more = if failed.len() > 1 {
                format!(" (and {} more routes failed)", failed.len() - 1)
            } else {
                String::new()
            };
            bail!("{what}: {first}{more}");
        }
        tuns.push(tun);
    }
    Ok(tuns)
}

/// The admin socket, created 0600: whoever can connect can terminate
/// tunnels and read their state. A stale socket from an earlier run is
/// replaced; any other file at that path is an error, not deleted.
fn control_listener(path: Option<&Path>) -> Result<Option<UnixListener>> {
    let Some(p) = path else { return Ok(None) };
    match std::fs::symlink_metadata(p) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => std::fs::remove_file(p)?,
        Ok(_) => bail!("control socket path {} exists and is not a socket", p.display()),
        Err(_) => {}
    }
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).ok();
    }
    let l = sys::with_umask(0o177, || UnixListener::bind(p))
        .with_context(|| format!("cannot create control socket {}", p.display()))?;
    l.set_nonblocking(true)?;
    Ok(Some(l))
}

/// What the control thread needs from the daemon's set-up.
struct ControlParts<'a> {
    runtime: &'a Arc<Runtime>,
    keystore: &'a Arc<Keystore>,
    udp: &'a UdpSocket,
    /// UDP 500.
    ike: UdpSocket,
    up: crate::datapath::channel::Receiver<Report>,
    queries: crate::datapath::channel::Receiver<crate::ops::Query>,
    outbound: Sender<SaCommand>,
    inbound: Sender<SaCommand>,
    stats: &'a Arc<Stats>,
    force_encap: bool,
}

/// The IKE socket (UDP 500). Its receive buffer is as large as the ESP
/// socket's: thousands of peers starting at once (a PoP's restart) send a
/// burst of IKE_SA_INIT, and with the default 208 KiB the kernel dropped
/// 3,506 datagrams under `cargo xtask bench-handshakes` with 4,000 IKE
/// SAs standing (each lost message costs its peer a retransmission).
fn ike_socket(cfg: &Config) -> Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddrV4::new(cfg.network.listen, cfg.network.ike_port))
        .with_context(|| format!("cannot bind UDP {}:{}", cfg.network.listen, cfg.network.ike_port))?;
    sock.set_nonblocking(true)?;
    enlarge_buffers(&sock, "IKE");
    want_destinations(&sock, cfg, "IKE")?;
    Ok(sock)
}

/// Listening on every address, ask for each datagram's destination: IKE
/// must know which of our addresses a peer sent to (NAT detection hashes
/// it, and the answer leaves from it). Without it every IKE SA would see
/// a NAT in front of us, so a refusal stops the start.
fn want_destinations(sock: &impl std::os::fd::AsRawFd, cfg: &Config, what: &str) -> Result<()> {
    if !cfg.network.listen.is_unspecified() {
        return Ok(());
    }
    sys::enable_recv_dst(sock).with_context(|| format!("IP_PKTINFO refused on the {what} socket"))
}

/// Give socket `what` [`SOCKET_BUFFER`] bytes of buffers, or say why not
/// (the kernel's defaults then stay, and a full buffer's drops are counted).
fn enlarge_buffers(sock: &impl std::os::fd::AsRawFd, what: &str) {
    if let Err(e) = sys::set_socket_buffers(sock, SOCKET_BUFFER) {
        warn!(error = %e, bytes = SOCKET_BUFFER, socket = what, "cannot enlarge the socket's buffers");
    }
}

fn control_plane(cfg: &Config, config_path: &Path, base: &Path, p: ControlParts) -> Result<ControlPlane> {
    // Tests only: a vault that keeps a copy of every secret, and a record of
    // what the guest is given, to prove that none of the first is in the second.
    let vault = if cfg.ike.secret_audit.is_some() {
        warn!("IKE secret audit is on: every IKE secret is kept and written out at exit (tests only)");
        wasmsec_crypto::Vault::new_audited()
    } else {
        wasmsec_crypto::Vault::new()
    };
    let mut ike = p.runtime.ike_instance(vault, p.keystore.clone())?;
    if cfg.ike.guest_transcript.is_some() {
        ike.store.data_mut().transcript = Some(Vec::new());
    }
    ike.store.data_mut().keylog = cfg.ike.keylog.clone();
    if let Some(k) = &cfg.ike.keylog {
        warn!(file = %k.display(), "IKE key export is on: this file holds secrets");
    }
    ike.store.data_mut().esp_keylog = cfg.ike.esp_keylog.is_some();
    if let Some(k) = &cfg.ike.esp_keylog {
        warn!(file = %k.display(), "ESP key export is on: this file holds secrets");
    }
    let (traps, connections) = load_connections(cfg, config_path, base, &mut ike, p.force_encap)?;
    let policies = policies(cfg, base, p.runtime)?;
    {
        let p = &mut ike.store.data_mut().policy;
        for (tenant, r) in &policies {
            match tenant.as_str() {
                "" => p.global = Some(r.slot.clone()),
                t => drop(p.tenants.insert(t.to_string(), r.slot.clone())),
            }
        }
        p.tenant_of = crate::control::connections::tenant_of(&cfg.connection);
    }
    let mut children = Children::new(p.outbound, p.inbound, p.keystore.clone());
    children.esp_keylog = cfg.ike.esp_keylog.clone();
    children.any_address = cfg.network.listen.is_unspecified();
    let history_applied = connections.len();
    let history = crate::control::connections::History::loaded(connections);
    // The loads at start are those of the first output's IKE SAs.
    let compaction = crate::control::Compaction { loads_applied: history.loads(), ..Default::default() };
    Ok(ControlPlane {
        ike,
        runtime: p.runtime.clone(),
        history_applied,
        history,
        compaction,
        reload_ctx: crate::control::connections::ReloadContext {
            path: config_path.to_path_buf(),
            base: base.to_path_buf(),
            force_encap: p.force_encap,
            domains: Domains::at_start(cfg),
            policy_cache: policy_cache(cfg),
            policy_watch: cfg.policy.watch,
            sections: cfg.connection.clone(),
            progress: Default::default(),
        },
        guard: GuestGuard::default(),
        fault_injection: cfg.control.fault_injection,
        fault_next: None,
        audit_files: (cfg.ike.secret_audit.clone(), cfg.ike.guest_transcript.clone()),
        sockets: IkeSockets::new(cfg.network.listen, p.ike, p.udp.try_clone()?)?,
        up: p.up,
        reports: Default::default(),
        from_500: Default::default(),
        unapplied: Default::default(),
        replace_at: None,
        replacements_failed: 0,
        start_over_pending: false,
        last_view: Default::default(),
        failures: Default::default(),
        queries: p.queries,
        held_queries: Default::default(),
        admin_retry: Default::default(),
        terminated: Default::default(),
        totals: Default::default(),
        stats: p.stats.clone(),
        traps,
        children,
        policies,
        heard: Default::default(),
        configured: Default::default(),
        arrived_at: Default::default(),
        heap_trim: Default::default(),
    })
}

/// The policy modules (`[policy] module` and each tenant's), loaded and
/// checked before anything serves (a module that fails its checks at
/// start is a config error), and their watchers; by tenant ("" for
/// `[policy] module`).
fn policies(cfg: &Config, base: &Path, runtime: &crate::wasm::Runtime) -> Result<Vec<(String, Arc<Reloader>)>> {
    let modules = policy_modules(cfg);
    if modules.is_empty() {
        return Ok(Vec::new());
    }
    let cache = policy_cache(cfg);
    let mut out = Vec::new();
    for (tenant, key, module) in modules {
        let r =
            Arc::new(Reloader::new(Arc::default(), runtime.policy_engines().clone(), base.join(module), cache.clone()));
        r.reload(std::time::Instant::now()).with_context(|| format!("{key} = {:?}", module.display()))?;
        if cfg.policy.watch {
            crate::policy::watch::spawn(r.clone())?;
        }
        out.push((tenant, r));
    }
    Ok(out)
}

/// The compiled policy modules' cache, created if need be (none: they are
/// compiled at every load).
fn policy_cache(cfg: &Config) -> Option<PathBuf> {
    match crate::wasm::policy::cache_dir(&cfg.runtime.state_dir.join("policy-cache")) {
        Ok(d) => Some(d),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "policy modules are compiled at every load");
            None
        }
    }
}

/// Every policy module of the config: (tenant, where it is configured, file).
fn policy_modules(cfg: &Config) -> Vec<(String, String, &Path)> {
    let global = cfg.policy.module.as_deref().map(|m| (String::new(), "[policy] module".to_string(), m));
    let tenants = cfg.tenant.iter().filter_map(|t| {
        let m = t.policy.as_deref()?;
        Some((t.name.get_ref().clone(), format!("tenant {:?}: policy", t.name.get_ref()), m))
    });
    global.into_iter().chain(tenants).collect()
}

/// The admin API's TCP token, when `[control] api` is set.
fn api_token(cfg: &Config, base: &Path) -> Result<Option<zeroize::Zeroizing<String>>> {
    match (&cfg.control.api, &cfg.control.api_token) {
        (None, _) => Ok(None),
        (Some(_), None) => {
            bail!("[control] api needs api_token = \"file:PATH\" (or env:NAME): TCP requests must carry it")
        }
        (Some(_), Some(t)) => Ok(Some(t.load_token(base).map_err(|e| anyhow::anyhow!("[control] api_token: {e}"))?)),
    }
}

/// Bind what the ops thread serves (metrics, the admin API) before any
/// thread starts.
fn ops_listeners(cfg: &Config, base: &Path) -> Result<crate::ops::Listeners> {
    let token = api_token(cfg, base)?;
    Ok(crate::ops::Listeners {
        metrics: cfg.control.metrics.map(|a| crate::ops::bind_tcp(a, "metrics")).transpose()?,
        admin_unix: control_listener(cfg.control.socket.as_deref())?,
        admin_tcp: match (cfg.control.api, token) {
            (Some(a), Some(t)) => Some((crate::ops::bind_tcp(a, "api")?, t)),
            _ => None,
        },
    })
}

/// What `wasmsec check` adds to parsing the config: every secret is read
/// (files must be private), and no manual key serves two SAs.
pub fn check_secrets(cfg: &Config, base: &Path) -> Result<()> {
    api_token(cfg, base)?;
    manual_sas(cfg, base, &Arc::new(Keystore::new()), false)?;
    for c in &cfg.connection {
        c.psk.load_secret(base).map_err(|e| anyhow::anyhow!("connection {:?}: psk: {e}", c.name.get_ref()))?;
    }
    Ok(())
}

/// `check-config`: load every policy module as the daemon would
/// (compile, link, self-test, the cases beside it) without serving it,
/// leaving the compiled artifacts in the daemon's cache; returns how many
/// modules and how many cases passed.
pub fn check_policy(cfg: &Config, base: &Path) -> Result<Option<(usize, usize)>> {
    let modules = policy_modules(cfg);
    if modules.is_empty() {
        return Ok(None);
    }
    let (engines, stop) = crate::wasm::policy::standalone_engines()?;
    // The daemon's artifact cache, where it can be made: what check-config
    // compiles, the daemon then loads at once (a module with a language
    // runtime takes seconds to compile).
    let cache = policy_cache(cfg);
    let mut cases = 0;
    let mut result = Ok(());
    for (_, key, module) in &modules {
        let r = Reloader::new(Arc::default(), engines.clone(), base.join(module), cache.clone());
        if let Err(e) = r.reload(std::time::Instant::now()) {
            result = Err(e).with_context(|| format!("{key} = {:?}", module.display()));
            break;
        }
        match crate::policy::cases::load(&base.join(module)) {
            Ok(c) => cases += c.map_or(0, |c| c.len()),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    result.map(|()| Some((modules.len(), cases)))
}

/// The guest groups: the ESP component each tunnel names (resolved against
/// the config file's directory) compiled once; returns each connection's
/// and each manual tunnel's group (0: the project's component).
fn guest_groups(cfg: &Config, base: &Path, rt: &mut Runtime) -> Result<(HashMap<String, usize>, Vec<usize>)> {
    let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
    let mut group_of = |p: &Option<PathBuf>, rt: &mut Runtime| -> Result<usize> {
        let Some(p) = p else { return Ok(0) };
        let p = if p.is_relative() { base.join(p) } else { p.clone() };
        if let Some(g) = by_path.get(&p) {
            return Ok(*g);
        }
        let g = rt.add_esp(&p).with_context(|| format!("loading esp_component {}", p.display()))?;
        warn!(component = %p.display(), group = g, "a tunnel is served by its own ESP component");
        by_path.insert(p, g);
        Ok(g)
    };
    let mut connections = HashMap::new();
    for c in &cfg.connection {
        connections.insert(c.name.get_ref().clone(), group_of(&c.esp_component, rt)?);
    }
    let manual = cfg.manual.iter().map(|m| group_of(&m.esp_component, rt)).collect::<Result<Vec<_>>>()?;
    Ok((connections, manual))
}

/// Each direction's guest groups: for each routing domain (the daemon's,
/// then each tenant's), one per ESP component, so group `domain *
/// components + component`; the manual SAs in the daemon's domain.
fn direction_groups(
    rt: &Runtime,
    ks: &Arc<Keystore>,
    manual: &ManualSas,
    domains: usize,
    outbound: bool,
) -> Result<Groups> {
    let mut groups = Groups::default();
    for domain in 0..domains {
        for component in 0..rt.esp_groups() {
            let mut set = SaSet::new(ks.clone(), vec![], vec![])?;
            let mine = manual.groups.iter().enumerate().filter(|(_, g)| domain == 0 && **g == component);
            for (i, _) in mine {
                if outbound {
                    groups.by_spi.insert(manual.outbound[i].sa.spi, component);
                    set.outbound.insert(manual.outbound[i].sa.spi, manual.outbound[i].clone());
                } else {
                    groups.by_spi.insert(manual.inbound[i].sa.spi, component);
                    set.inbound.insert(manual.inbound[i].sa.spi, manual.inbound[i].clone());
                }
            }
            groups.list.push(Group::new(rt, component, domain, set)?);
        }
    }
    Ok(groups)
}

/// Run the daemon until a stop signal.
pub fn run(config_path: &Path, stats_file: Option<&Path>) -> Result<()> {
    let mut cfg = Config::load(config_path)?;
    let base = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    if !sys::is_root() {
        bail!("wasmsec run needs root (or CAP_NET_ADMIN and CAP_NET_RAW) for the TUN device and sockets");
    }
    sys::install_stop_handler();
    // The daemon's own sockets, pipes and watches, then two per tenant
    // (its TUN device, held by the outbound and the inbound loop).
    let need = 64 + 2 * cfg.tenant.len() as u64;
    let open_files = sys::raise_open_files_limit().context("reading the open-files limit")?;
    if open_files < need {
        bail!(
            "{} tenants need about {need} open files, and the limit is {open_files}: raise it \
             (ulimit -n, systemd LimitNOFILE=, the container runtime's nofile ulimit)",
            cfg.tenant.len()
        );
    }
    debug!(open_files, "open-files limit");
    let dir = components_dir(cfg.runtime.components.as_deref());
    let with_ike = !cfg.connection.is_empty();
    let ike_path = match &cfg.runtime.ike_component {
        Some(p) if p.is_relative() => base.join(p),
        Some(p) => p.clone(),
        None => dir.join("ike.wasm"),
    };
    let mut runtime =
        Runtime::with_ike(&dir.join("esp.wasm"), with_ike.then_some(ike_path.as_path())).with_context(|| {
            format!("cannot load the components from {} (build them with `cargo xtask build`)", dir.display())
        })?;
    let (connection_components, manual_groups) = guest_groups(&cfg, &base, &mut runtime)?;
    // A connection's group is its domain's group of its component.
    let components = runtime.esp_groups();
    let domain_of: HashMap<&String, usize> =
        cfg.connection.iter().map(|c| (c.name.get_ref(), cfg.domain_of(c))).collect();
    let connection_groups: HashMap<String, usize> = connection_components
        .into_iter()
        .map(|(name, k)| {
            let d = domain_of.get(&name).copied().unwrap_or(0);
            (name, d * components + k)
        })
        .collect();
    let runtime = Arc::new(runtime);
    let keystore = Arc::new(Keystore::new());
    let mut manual = manual_sas(&cfg, &base, &keystore, true)?;
    manual.groups = manual_groups;
    let domains = 1 + cfg.tenant.len();
    let out_groups = direction_groups(&runtime, &keystore, &manual, domains, true)?;
    let in_groups = direction_groups(&runtime, &keystore, &manual, domains, false)?;
    let tuns = open_tuns(&cfg)?;
    let udp = UdpSocket::bind(SocketAddrV4::new(cfg.network.listen, cfg.network.nat_t_port))
        .with_context(|| format!("cannot bind UDP {}:{}", cfg.network.listen, cfg.network.nat_t_port))?;
    udp.set_nonblocking(true)?;
    // A burst of GSO datagrams (a TSO super-packet sealed) lands at once:
    // with the default 208 KiB the receiving gateway dropped one in six.
    enlarge_buffers(&udp, "ESP in UDP");
    want_destinations(&udp, &cfg, "NAT-T")?;
    // The outer TOS byte of each datagram, for RFC 6040's decapsulation.
    if let Err(e) = sys::enable_recv_tos(&udp) {
        warn!(error = %e, "IP_RECVTOS refused: ECN marks on ESP in UDP are not carried inward");
    }
    let gro = cfg.network.udp_offload
        && sys::enable_udp_gro(&udp)
            .map_err(|e| warn!(error = %e, "UDP GRO refused; reading datagrams one by one"))
            .is_ok();
    let want_raw = cfg.network.raw_esp || manual.peers.iter().any(|p| p.encapsulation == Encapsulation::None);
    let raw = match RawEsp::open(cfg.network.listen) {
        Ok(r) if want_raw || with_ike => Some(r),
        Ok(_) => None,
        Err(e) if want_raw => return Err(e).context("cannot open raw ESP socket (IP protocol 50)"),
        Err(e) => {
            warn!(error = %e, "no raw ESP socket: IKE tunnels will always use UDP encapsulation");
            None
        }
    };
    let link = match (&raw, cfg.network.raw_esp_send) {
        (Some(_), RawEspSend::Link) => Some(
            LinkEsp::open(cfg.network.listen, false)
                .context("cannot open a packet socket for raw ESP ([network] raw_esp_send = \"link\")")?,
        ),
        (None, RawEspSend::Link) => {
            warn!("[network] raw_esp_send = \"link\" has no effect: there is no raw ESP socket");
            None
        }
        // The default: without a packet socket (or a way to look at the
        // output path), the IP socket as before.
        (Some(_), RawEspSend::Auto) => LinkEsp::open(cfg.network.listen, true)
            .map_err(
                |e| warn!(error = %e, "raw ESP through the IP socket: no packet socket for raw_esp_send = \"auto\""),
            )
            .ok(),
        _ => None,
    };
    // Manual tunnels' traffic, counted by SPI like a CHILD SA's and shown
    // by tunnel name.
    let mut stats = Stats::default();
    let (mut out_traffic, mut in_traffic) = (HashMap::new(), HashMap::new());
    for (i, m) in cfg.manual.iter().enumerate() {
        let t = crate::stats::ManualTraffic { name: m.name.get_ref().clone(), ..Default::default() };
        let [inbound, outbound] = t.sas.clone();
        out_traffic.insert(manual.outbound[i].sa.spi, outbound);
        in_traffic.insert(manual.inbound[i].sa.spi, inbound);
        stats.manual.push(t);
    }
    stats.watch_socket("nat_t", &udp)?;
    if let Some(r) = &raw {
        // The same bursts as on 4500, for raw ESP.
        enlarge_buffers(r, "raw ESP");
        stats.watch_socket("esp", r)?;
    }
    let ike_socket = with_ike.then(|| ike_socket(&cfg)).transpose()?;
    if let Some(s) = &ike_socket {
        stats.watch_socket("ike", s)?;
    }
    let stats = Arc::new(stats);
    info!(
        tun = tuns[0].name(), tenants = cfg.tenant.len(), mtu = cfg.tunnel.mtu, listen = %cfg.network.listen, port = cfg.network.nat_t_port,
        raw_esp = raw.is_some(), raw_esp_send = ?cfg.network.raw_esp_send, copy_dscp = ?cfg.network.copy_dscp, copy_ecn = cfg.network.copy_ecn, batch = cfg.runtime.batch, components = %dir.display(), ike = with_ike,
        "wasmsec data plane up"
    );

    let listeners = ops_listeners(&cfg, &base)?;
    let (to_outbound, out_inbox) = channel::<SaCommand>()?;
    let (to_inbound, in_inbox) = channel::<SaCommand>()?;
    let (up_tx, up_rx) = channel::<Report>()?;
    let (query_tx, query_rx) = channel::<crate::ops::Query>()?;
    let control = if let Some(ike) = ike_socket {
        let parts = ControlParts {
            runtime: &runtime,
            keystore: &keystore,
            udp: &udp,
            ike,
            up: up_rx,
            queries: query_rx,
            outbound: to_outbound.try_clone()?,
            inbound: to_inbound,
            stats: &stats,
            force_encap: raw.is_none(),
        };
        let mut c = control_plane(&cfg, config_path, &base, parts)?;
        c.children.groups = connection_groups;
        c.children.bounds = crate::control::bounds::of_all(&cfg.connection);
        Some(c)
    } else {
        None
    };
    // The outer header's DSCP and ECN: `[network]`'s, and each manual
    // tunnel's own where it sets them (as a child's at its install).
    let (mut out_copy, mut in_copy) = (BySa::new(tos::Copy::of(&cfg.network)), BySa::new(tos::Copy::of(&cfg.network)));
    for (o, i) in manual.outbound.iter().zip(&manual.inbound) {
        out_copy.installed(o.sa.spi, o.tos);
        in_copy.installed(i.sa.spi, i.tos);
    }
    let outbound = Loop {
        runtime: runtime.clone(),
        groups: out_groups,
        tuns: tuns.iter().map(|t| t.try_clone().map(Some)).collect::<std::io::Result<_>>()?,
        udp: udp.try_clone()?,
        raw: raw.as_ref().map(RawEsp::try_clone).transpose()?,
        link,
        peers: Peers::new(manual.peers.clone()),
        stats: stats.clone(),
        batch: cfg.runtime.batch,
        inbox: Some(out_inbox),
        up: Some(up_tx.try_clone()?),
        to_outbound: None,
        floats: HashMap::new(),
        sources: Vec::new(),
        staging: Loop::staging_for(cfg.runtime.batch),
        from_domain: Vec::with_capacity(cfg.runtime.batch),
        inner_tos: vec![0; cfg.runtime.batch],
        copy: out_copy,
        traffic: out_traffic,
        cutter: Default::default(),
        gso: GsoSend::new(cfg.network.udp_offload),
        raw_out: Vec::with_capacity(cfg.runtime.batch),
        gro: Default::default(),
        hold: Default::default(),
        tun_out: Default::default(),
        raw_first: false,
    };
    let inbound = Loop {
        runtime,
        groups: in_groups,
        tuns: tuns.into_iter().map(Some).collect(),
        udp,
        raw,
        link: None,
        peers: Peers::new(manual.peers),
        stats: stats.clone(),
        batch: cfg.runtime.batch,
        inbox: Some(in_inbox),
        up: Some(up_tx),
        to_outbound: Some(to_outbound),
        floats: HashMap::new(),
        sources: Vec::with_capacity(cfg.runtime.batch),
        staging: Loop::staging_for(cfg.runtime.batch),
        from_domain: Vec::with_capacity(cfg.runtime.batch),
        inner_tos: Vec::new(),
        copy: in_copy,
        traffic: in_traffic,
        cutter: Default::default(),
        gso: Default::default(),
        raw_out: Vec::new(),
        gro: GroRecv::new(gro),
        hold: Default::default(),
        tun_out: Default::default(),
        raw_first: false,
    };
    let t_out = std::thread::Builder::new().name("esp-out".into()).spawn(move || outbound.run_outbound())?;
    let t_in = std::thread::Builder::new().name("esp-in".into()).spawn(move || inbound.run_inbound())?;
    let t_ike = match control {
        Some(c) => Some(std::thread::Builder::new().name("ike".into()).spawn(move || c.run())?),
        None => None,
    };
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let t_ops = if listeners.any() || t_ike.is_some() {
        let control = t_ike.is_some().then_some(query_tx);
        let watch = cfg.control.watch_config.then(|| config_path.to_path_buf());
        let ops = crate::ops::Ops { stats: stats.clone(), control, ready: ready.clone(), watch };
        Some(crate::ops::spawn(listeners, ops)?)
    } else {
        None
    };
    // The sections are the control thread's now (a reload reads the file
    // anew): at 10,000 connections this copy held 14 MB for nothing. And
    // what reading and loading them freed goes back to the system, which
    // glibc does not do by itself below the top of its heap: 53 MB of a
    // 178 MB resident set at 10,000 connections.
    let connections = cfg.connection.len();
    cfg.connection = Vec::new();
    cfg.manual = Vec::new();
    let (before, t0) = (sys::resident_bytes(), std::time::Instant::now());
    if sys::trim_heap() {
        let after = sys::resident_bytes();
        debug!(
            connections,
            rss_before_mib = before >> 20,
            rss_after_mib = after >> 20,
            took_ms = t0.elapsed().as_millis() as u64,
            "start-up: freed heap given back to the system"
        );
    }

    while !sys::stop_requested() {
        // Every 250 ms, or at once on a stop.
        let _ = sys::poll_readable(&[], 250);
        if let Some(f) = stats_file {
            let _ = stats.write_file(f);
        }
        if t_out.is_finished() || t_in.is_finished() || t_ike.as_ref().is_some_and(|t| t.is_finished()) {
            sys::request_stop();
        }
    }
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = t_out.join();
    let _ = t_in.join();
    if let Some(t) = t_ops {
        let _ = t.join();
    }
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
