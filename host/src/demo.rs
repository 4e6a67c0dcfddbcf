//! `wasmsec demo`: two gateways and two LAN hosts in network namespaces,
//! two wasmsec daemons that negotiate a tunnel with IKEv2 (a pre-shared key
//! made for the run; `--manual`: generated static SAs instead), pings both
//! ways, a capture on the gateway-to-gateway link that must hold only ESP.
//!
//! ```text
//! wsdemo-hosta 198.18.1.10 -- 198.18.1.1 wsdemo-gwa 198.18.0.1 == wan0 == 198.18.0.2 wsdemo-gwb 198.18.2.1 -- 198.18.2.10 wsdemo-hostb
//! ```
//! All addresses are in the RFC 2544 benchmark range and live only inside
//! the namespaces, which have no link to the root namespace.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ring::rand::{SecureRandom, SystemRandom};

use crate::keys::EspAlgorithm;
use crate::sys;

pub const NAMESPACES: [&str; 4] = ["wsdemo-hosta", "wsdemo-gwa", "wsdemo-gwb", "wsdemo-hostb"];
const HOST_A: &str = "198.18.1.10";
const HOST_B: &str = "198.18.2.10";
const LAN_A: &str = "198.18.1.0/24";
const LAN_B: &str = "198.18.2.0/24";
const WAN_A: &str = "198.18.0.1";
const WAN_B: &str = "198.18.0.2";

/// What `wasmsec demo --help` says before the options.
pub const ABOUT: &str = "\
Builds two LAN hosts and two gateways in network namespaces, starts one
wasmsec per gateway, lets them negotiate a tunnel with IKEv2 (a pre-shared
key made for this run), pings LAN to LAN both ways, captures the gateway
link, and checks that it held only ESP. Exits 0 only if every check passes.
Needs root. No configuration to write: everything goes to --dir.";

/// How the demo's gateways get their SAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keying {
    /// IKEv2 with a pre-shared key generated for the run.
    Ike,
    /// Static SAs with generated keys (`[[manual]]`).
    Manual,
}

/// Demo options (`wasmsec demo --help`).
#[derive(Debug, Clone)]
pub struct Options {
    /// How the gateways get their SAs: IKEv2 or static SAs.
    pub keying: Keying,
    /// The ESP algorithm of the SAs.
    pub algorithm: EspAlgorithm,
    /// Raw ESP (IP protocol 50) instead of ESP-in-UDP.
    pub raw_esp: bool,
    /// Pings sent each way between the two LAN hosts.
    pub pings: u32,
    /// Where configs, keys, logs and the capture go; emptied at the start.
    pub dir: PathBuf,
    /// Leave everything running (tear down with `wasmsec demo --down`).
    pub keep: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keying: Keying::Ike,
            algorithm: EspAlgorithm::Aes256Gcm16,
            raw_esp: false,
            pings: 5,
            dir: PathBuf::from("/tmp/wasmsec-demo"),
            keep: false,
        }
    }
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(args);
    sh("ip", &a)
}

/// Delete the demo namespaces, stopping whatever runs in them (only
/// processes inside our own namespaces, by PID).
pub fn down() -> Result<()> {
    for ns in NAMESPACES {
        if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                let _ = sys::signal(pid, sys::SIGTERM);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for ns in NAMESPACES {
        if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                let _ = sys::signal(pid, sys::SIGKILL);
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
    }
    Ok(())
}

fn topology_up() -> Result<()> {
    down()?;
    for ns in NAMESPACES {
        sh("ip", &["netns", "add", ns])?;
        in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
    }
    let links = [
        ("wsdemo-hosta", "eth0", "wsdemo-gwa", "lan0"),
        ("wsdemo-gwa", "wan0", "wsdemo-gwb", "wan0"),
        ("wsdemo-gwb", "lan0", "wsdemo-hostb", "eth0"),
    ];
    for (i, (ns1, if1, ns2, if2)) in links.iter().enumerate() {
        let tmp1 = format!("wsd{i}a");
        let tmp2 = format!("wsd{i}b");
        sh("ip", &["link", "add", "name", &tmp1, "netns", ns1, "type", "veth", "peer", "name", &tmp2, "netns", ns2])?;
        in_ns(ns1, &["ip", "link", "set", &tmp1, "name", if1])?;
        in_ns(ns2, &["ip", "link", "set", &tmp2, "name", if2])?;
    }
    let addrs = [
        ("wsdemo-hosta", "eth0", "198.18.1.10/24"),
        ("wsdemo-gwa", "lan0", "198.18.1.1/24"),
        ("wsdemo-gwa", "wan0", "198.18.0.1/24"),
        ("wsdemo-gwb", "wan0", "198.18.0.2/24"),
        ("wsdemo-gwb", "lan0", "198.18.2.1/24"),
        ("wsdemo-hostb", "eth0", "198.18.2.10/24"),
    ];
    for (ns, dev, a) in addrs {
        in_ns(ns, &["ip", "addr", "add", a, "dev", dev])?;
        in_ns(ns, &["ip", "link", "set", dev, "up"])?;
    }
    in_ns("wsdemo-hosta", &["ip", "route", "add", "default", "via", "198.18.1.1"])?;
    in_ns("wsdemo-hostb", &["ip", "route", "add", "default", "via", "198.18.2.1"])?;
    for gw in ["wsdemo-gwa", "wsdemo-gwb"] {
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            in_ns(gw, &["sysctl", "-qw", &format!("{k}={v}")])?;
        }
    }
    Ok(())
}

fn random_hex(rng: &SystemRandom, n: usize) -> String {
    let mut b = vec![0u8; n];
    rng.fill(&mut b).expect("OS random number generator failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random_spi(rng: &SystemRandom) -> u32 {
    let mut b = [0u8; 4];
    rng.fill(&mut b).expect("OS random number generator failed");
    // 0x10000000-0x7fffffff: above the reserved values and below the IKE
    // engine's range (`wasmsec_wire::esp::IKE_SPI_BITS`), should someone add
    // a connection to these files.
    (u32::from_be_bytes(b) & 0x7fff_ffff) | 0x1000_0000
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// One SA of the demo, for the configs and for tshark's ESP SA table.
struct DemoSa {
    src: &'static str,
    dst: &'static str,
    spi: u32,
    key_file: &'static str,
    key_hex: String,
}

/// The IKE demo's identities and control sockets.
const ID_A: &str = "gwa.demo.wasmsec";
const ID_B: &str = "gwb.demo.wasmsec";

fn control_socket(o: &Options, gw: &str) -> PathBuf {
    o.dir.join(format!("{gw}.sock"))
}

/// Two IKEv2 gateways with a pre-shared key made for this run: gwa
/// initiates at start, gwb answers.
fn write_ike_configs(o: &Options) -> Result<()> {
    std::fs::create_dir_all(&o.dir)?;
    let rng = SystemRandom::new();
    write_secret(&o.dir.join("psk"), &random_hex(&rng, 32))?;
    let conf = |gw: &str, me: &str, peer: &str, ids: (&str, &str), lans: (&str, &str), src: &str, start: &str| {
        format!(
            "# generated by `wasmsec demo`: IKEv2 with a pre-shared key made for this run\n\
             [tunnel]\nname = \"wsec0\"\nmtu = 1400\nsource = \"{src}\"\n\n[network]\nlisten = \"{me}\"\n\n\
             [control]\nsocket = \"{sock}\"\n\n\
             [[connection]]\nname = \"demo\"\nlocal_addrs = [\"{me}\"]\nremote_addrs = [\"{peer}\"]\n\
             local_id = \"{}\"\nremote_id = \"{}\"\npsk = \"file:psk\"\n\
             proposals = \"aes256gcm16-prfsha256-x25519\"\nstart_action = \"{start}\"\nencap = {encap}\n\n\
             [[connection.children]]\nname = \"lan\"\nlocal_ts = [\"{}\"]\nremote_ts = [\"{}\"]\n\
             esp_proposals = \"{alg}\"\n",
            ids.0,
            ids.1,
            lans.0,
            lans.1,
            sock = control_socket(o, gw).display(),
            encap = !o.raw_esp,
            alg = o.algorithm.name(),
        )
    };
    let a = conf("gwa", WAN_A, WAN_B, (ID_A, ID_B), (LAN_A, LAN_B), "198.18.1.1", "start");
    let b = conf("gwb", WAN_B, WAN_A, (ID_B, ID_A), (LAN_B, LAN_A), "198.18.2.1", "none");
    std::fs::write(o.dir.join("gwa.toml"), a)?;
    std::fs::write(o.dir.join("gwb.toml"), b)?;
    Ok(())
}

/// A running gateway's SAs, from its control socket.
fn status(sock: &Path) -> Result<serde_json::Value> {
    let target = crate::ops::client::Target::Unix(sock.to_path_buf());
    let r = crate::ops::client::request(&target, "GET", "/v1/status", None)?;
    anyhow::ensure!(r.status == 200, "status answered {}: {}", r.status, r.body);
    Ok(r.body)
}

/// Wait until both gateways have an IKE SA and a CHILD SA, then print them.
fn wait_for_sas(o: &Options) -> Result<(serde_json::Value, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = status(&control_socket(o, "gwa"));
        let b = status(&control_socket(o, "gwb"));
        if let (Ok(a), Ok(b)) = (&a, &b) {
            let up = |v: &serde_json::Value| v["child_sas"].as_array().is_some_and(|c| !c.is_empty());
            if up(a) && up(b) {
                return Ok((a.clone(), b.clone()));
            }
        }
        if Instant::now() > deadline {
            bail!("no CHILD_SA on both gateways within 20 s; see {}", o.dir.join("gwa.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_sas(gw: &str, st: &serde_json::Value) {
    for i in st["ike_sas"].as_array().into_iter().flatten() {
        println!(
            "{gw}: IKE_SA {} {} -> {} as {}, {}",
            i["spi"].as_str().unwrap_or("?"),
            i["local"].as_str().unwrap_or("?"),
            i["remote"].as_str().unwrap_or("?"),
            if i["initiator"].as_bool() == Some(true) { "initiator" } else { "responder" },
            i["proposal"].as_str().unwrap_or("?"),
        );
    }
    for c in st["child_sas"].as_array().into_iter().flatten() {
        let ts =
            |k: &str| c[k].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect::<Vec<_>>().join(",");
        println!(
            "{gw}: CHILD_SA {} SPIs in {} out {}, {}, {} === {}{}",
            c["child"].as_str().unwrap_or("?"),
            c["inbound_spi"].as_str().unwrap_or("?"),
            c["outbound_spi"].as_str().unwrap_or("?"),
            c["proposal"].as_str().unwrap_or("?"),
            ts("local_ts"),
            ts("remote_ts"),
            if c["encap"].as_bool() == Some(true) { ", UDP-encapsulated" } else { "" },
        );
    }
}

/// The two gateways agree: one IKE SA each, gwa initiator, and one CHILD SA
/// pair whose SPIs mirror each other.
fn sas_agree(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let one = |v: &serde_json::Value, k: &str| v[k].as_array().map_or(0, Vec::len) == 1;
    let (ca, cb) = (&a["child_sas"][0], &b["child_sas"][0]);
    one(a, "ike_sas")
        && one(b, "ike_sas")
        && a["ike_sas"][0]["initiator"].as_bool() == Some(true)
        && b["ike_sas"][0]["initiator"].as_bool() == Some(false)
        && one(a, "child_sas")
        && one(b, "child_sas")
        && ca["inbound_spi"] == cb["outbound_spi"]
        && ca["outbound_spi"] == cb["inbound_spi"]
}

fn write_manual_configs(o: &Options) -> Result<Vec<DemoSa>> {
    std::fs::create_dir_all(&o.dir)?;
    let rng = SystemRandom::new();
    let n = o.algorithm.keymat_len();
    let a_to_b =
        DemoSa { src: WAN_A, dst: WAN_B, spi: random_spi(&rng), key_file: "a-to-b.key", key_hex: random_hex(&rng, n) };
    let b_to_a =
        DemoSa { src: WAN_B, dst: WAN_A, spi: random_spi(&rng), key_file: "b-to-a.key", key_hex: random_hex(&rng, n) };
    for sa in [&a_to_b, &b_to_a] {
        write_secret(&o.dir.join(sa.key_file), &sa.key_hex)?;
    }
    let encap = if o.raw_esp { "none" } else { "udp" };
    let conf = |me: &str, local: &str, remote_addr: &str, remote: &str, out: &DemoSa, inb: &DemoSa, src: &str| {
        // Each gateway reserves its manual key's IVs in its own state directory.
        let state = o.dir.join(format!("state-{me}"));
        format!(
            "# generated by `wasmsec demo`\n[tunnel]\nname = \"wsec0\"\nmtu = 1400\nsource = \"{src}\"\n\n[network]\nlisten = \"{me}\"\n\n\
             [runtime]\nstate_dir = \"{}\"\n\n\
             [[manual]]\nname = \"demo\"\nremote_address = \"{remote_addr}\"\nencapsulation = \"{encap}\"\nalgorithm = \"{alg}\"\n\
             local_ts = [\"{local}\"]\nremote_ts = [\"{remote}\"]\nout_spi = \"{:#010x}\"\nout_key = \"file:{}\"\n\
             in_spi = \"{:#010x}\"\nin_key = \"file:{}\"\n",
            state.display(),
            out.spi,
            out.key_file,
            inb.spi,
            inb.key_file,
            alg = o.algorithm.name()
        )
    };
    std::fs::write(o.dir.join("gwa.toml"), conf(WAN_A, LAN_A, WAN_B, LAN_B, &a_to_b, &b_to_a, "198.18.1.1"))?;
    std::fs::write(o.dir.join("gwb.toml"), conf(WAN_B, LAN_B, WAN_A, LAN_A, &b_to_a, &a_to_b, "198.18.2.1"))?;
    // Wireshark's ESP SA table (uat file `esp_sa`), for an independent
    // decryption of the capture: tshark -o "uat:esp_sa:<line>".
    for sa in [&a_to_b, &b_to_a] {
        let keymat: Vec<u8> = (0..sa.key_hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&sa.key_hex[2 * i..2 * i + 2], 16).ok())
            .collect();
        if let Some(keys) = crate::keylog::esp_sa_keys(o.algorithm, &keymat) {
            crate::keylog::append_secret_line(
                &o.dir.join("esp_sa"),
                &crate::keylog::esp_sa_line(sa.src, sa.dst, sa.spi, &keys),
            )?;
        }
    }
    Ok(vec![a_to_b, b_to_a])
}

fn start_daemon(o: &Options, ns: &str, name: &str) -> Result<Child> {
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(o.dir.join(format!("{name}.log")))?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(&exe)
        .args(["run", "--config"])
        .arg(o.dir.join(format!("{name}.toml")))
        .arg("--stats-file")
        .arg(o.dir.join(format!("{name}-stats.json")))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start wasmsec")?;
    Ok(child)
}

/// Wait until the daemon has its routes and, with IKE, its control socket
/// (created once the IKE sockets are bound).
fn wait_ready(ns: &str, child: &mut Child, remote: &str, log: &Path, sock: Option<&Path>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            bail!(
                "wasmsec in {ns} exited ({st}); its log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if in_ns(ns, &["ip", "route", "show", remote]).is_ok_and(|r| r.contains("wsec0"))
            && sock.is_none_or(Path::exists)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("wasmsec in {ns} did not come up within 20 s; see {}", log.display())
}

fn start_capture(o: &Options) -> Result<Child> {
    let mut c = Command::new("ip")
        .args(["netns", "exec", "wsdemo-gwa", "tcpdump", "-i", "wan0", "-n", "-U", "--immediate-mode", "-w"])
        .arg(o.dir.join("wan.pcap"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start tcpdump (install the tcpdump package)")?;
    // tcpdump says "listening on" once the capture is armed.
    let stderr = c.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).context("tcpdump did not start capturing")?;
    Ok(c)
}

fn stop(child: &mut Child, sig: i32) {
    let _ = sys::signal(child.id(), sig);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Ping from a host namespace; returns (sent, received).
fn ping(ns: &str, to: &str, count: u32) -> (u32, u32) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-c", &count.to_string(), "-i", "0.2", "-W", "2", to])
        .output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let received = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (count, received)
}

/// What the gateway-to-gateway capture held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CaptureSummary {
    /// ESP in UDP on port 4500 (not keepalives, not IKE).
    pub esp_in_udp: usize,
    /// Raw ESP, IP protocol 50.
    pub esp_raw: usize,
    /// IPv4 packets between the two LANs seen in the clear: must be 0.
    pub cleartext_lan: usize,
    /// Everything else, e.g. IKE and NAT keepalives.
    pub other: usize,
}

fn in_lan(a: &[u8]) -> bool {
    a[0] == 198 && a[1] == 18 && (a[2] == 1 || a[2] == 2)
}

impl CaptureSummary {
    /// Classify every packet of a pcap file (Ethernet or raw IP link type).
    pub fn from_pcap(bytes: &[u8]) -> Result<CaptureSummary> {
        if bytes.len() < 24 {
            bail!("pcap file too short");
        }
        let le = match bytes[..4] {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
            _ => bail!("not a pcap file"),
        };
        let u32at = |b: &[u8], at: usize| {
            let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            if le { u32::from_le_bytes(w) } else { u32::from_be_bytes(w) }
        };
        let linktype = u32at(bytes, 20);
        let mut s = CaptureSummary::default();
        let mut at = 24;
        while at + 16 <= bytes.len() {
            let caplen = u32at(bytes, at + 8) as usize;
            let frame = &bytes[at + 16..(at + 16 + caplen).min(bytes.len())];
            at += 16 + caplen;
            let ip = match linktype {
                1 if frame.len() >= 14 && frame[12..14] == [0x08, 0x00] => &frame[14..],
                1 => continue, // ARP, IPv6 neighbour discovery: not inner traffic
                101 | 228 => frame,
                other => bail!("unsupported pcap link type {other}"),
            };
            let Ok(p) = wasmsec_wire::ipv4::Packet::new_checked(ip) else {
                s.other += 1;
                continue;
            };
            let l4 = p.payload();
            match p.protocol() {
                wasmsec_wire::ip::PROTO_ESP => s.esp_raw += 1,
                wasmsec_wire::ip::PROTO_UDP
                    if l4.len() >= 8 && (l4[2..4] == [0x11, 0x94] || l4[0..2] == [0x11, 0x94]) =>
                {
                    match wasmsec_wire::udp_encap::Datagram::classify(&l4[8..]) {
                        Ok(wasmsec_wire::udp_encap::Datagram::Esp(_)) => s.esp_in_udp += 1,
                        _ => s.other += 1,
                    }
                }
                _ if in_lan(&p.src_addr()) || in_lan(&p.dst_addr()) => s.cleartext_lan += 1,
                _ => s.other += 1,
            }
        }
        Ok(s)
    }
}

/// Run the demo; returns whether every check passed.
pub fn run(o: &Options) -> Result<bool> {
    if !sys::is_root() {
        bail!("the demo needs root: it creates network namespaces, TUN devices and a capture");
    }
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    println!(
        "wasmsec demo: {}, ESP {} over {}, state in {}",
        match o.keying {
            Keying::Ike => "IKEv2 with a generated pre-shared key",
            Keying::Manual => "static SAs with generated keys",
        },
        o.algorithm.name(),
        if o.raw_esp { "raw ESP (protocol 50)" } else { "ESP-in-UDP (port 4500)" },
        o.dir.display()
    );
    topology_up().context("building the namespace topology")?;
    let result = (|| -> Result<bool> {
        let mut checks: Vec<(&str, bool)> = Vec::new();
        let manual = match o.keying {
            Keying::Manual => Some(write_manual_configs(o)?),
            Keying::Ike => {
                write_ike_configs(o)?;
                None
            }
        };
        let mut capture = start_capture(o)?;
        // The responder first, so that gwa's first IKE_SA_INIT finds it listening.
        let ike = o.keying == Keying::Ike;
        let (sock_a, sock_b) = (control_socket(o, "gwa"), control_socket(o, "gwb"));
        let mut gwb = start_daemon(o, "wsdemo-gwb", "gwb")?;
        let ready_b =
            wait_ready("wsdemo-gwb", &mut gwb, LAN_A, &o.dir.join("gwb.log"), ike.then_some(sock_b.as_path()));
        let t0 = Instant::now();
        let mut gwa = start_daemon(o, "wsdemo-gwa", "gwa")?;
        let ready = ready_b.and_then(|_| {
            wait_ready("wsdemo-gwa", &mut gwa, LAN_B, &o.dir.join("gwa.log"), ike.then_some(sock_a.as_path()))
        });
        let ready = ready.and_then(|_| match &manual {
            Some(sas) => {
                println!("gateways up: SPI a->b {:#010x}, b->a {:#010x}", sas[0].spi, sas[1].spi);
                Ok(())
            }
            None => {
                let (a, b) = wait_for_sas(o)?;
                println!("IKE_SA and CHILD_SA established {} ms after gwa started:", t0.elapsed().as_millis());
                print_sas("gwa", &a);
                print_sas("gwb", &b);
                checks.push(("IKE_SA and CHILD_SA established, SPIs agree", sas_agree(&a, &b)));
                Ok(())
            }
        });
        if let Err(e) = ready {
            stop(&mut capture, sys::SIGINT);
            stop(&mut gwa, sys::SIGTERM);
            stop(&mut gwb, sys::SIGTERM);
            return Err(e);
        }
        let ab = ping("wsdemo-hosta", HOST_B, o.pings);
        println!("ping {HOST_A} -> {HOST_B}: {}/{} replies", ab.1, ab.0);
        let ba = ping("wsdemo-hostb", HOST_A, o.pings);
        println!("ping {HOST_B} -> {HOST_A}: {}/{} replies", ba.1, ba.0);
        std::thread::sleep(Duration::from_millis(500));
        stop(&mut capture, sys::SIGINT);
        if !o.keep {
            stop(&mut gwa, sys::SIGTERM);
            stop(&mut gwb, sys::SIGTERM);
        } else {
            std::thread::sleep(Duration::from_millis(600));
        }
        let cap = CaptureSummary::from_pcap(&std::fs::read(o.dir.join("wan.pcap"))?)?;
        for gw in ["gwa", "gwb"] {
            let st = std::fs::read_to_string(o.dir.join(format!("{gw}-stats.json"))).unwrap_or_default();
            println!("{gw} counters: {}", st.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        println!(
            "capture on gwa wan0: {} ESP-in-UDP, {} raw ESP, {} cleartext LAN packets, {} other (IKE, keepalives)",
            cap.esp_in_udp, cap.esp_raw, cap.cleartext_lan, cap.other
        );
        let esp = if o.raw_esp { cap.esp_raw } else { cap.esp_in_udp };
        let want = (4 * o.pings) as usize; // request + reply, both directions
        checks.extend([
            ("ping A -> B", ab.1 == ab.0),
            ("ping B -> A", ba.1 == ba.0),
            ("only ESP on the wire (no cleartext LAN packet)", cap.cleartext_lan == 0),
            ("every ping crossed as ESP", esp >= want),
        ]);
        let mut ok = true;
        for (name, pass) in checks {
            println!("{}: {name}", if pass { "PASS" } else { "FAIL" });
            ok &= pass;
        }
        Ok(ok)
    })();
    if o.keep {
        println!("kept running (--keep); tear down with: wasmsec demo --down");
    } else {
        down()?;
    }
    let ok = result?;
    println!("RESULT demo: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&65535u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for f in frames {
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(f);
        }
        b
    }

    fn eth_ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0u8; 20 + l4.len()];
        wasmsec_wire::ipv4::Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: proto,
            payload_len: l4.len(),
            ttl: 64,
            dscp_ecn: 0,
        }
        .emit(&mut ip)
        .unwrap();
        ip[20..].copy_from_slice(l4);
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn capture_classification() {
        let mut udp = vec![0x11, 0x94, 0x11, 0x94, 0, 20, 0, 0];
        udp.extend_from_slice(&[0, 0, 0x10, 0x01, 0, 0, 0, 1, 9, 9, 9, 9]);
        let mut keepalive = vec![0x11, 0x94, 0x11, 0x94, 0, 9, 0, 0];
        keepalive.push(0xff);
        let frames = vec![
            eth_ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, &udp),
            eth_ipv4([198, 18, 0, 1], [198, 18, 0, 2], 50, &[0, 0, 1, 0, 0, 0, 0, 1]),
            eth_ipv4([198, 18, 1, 10], [198, 18, 2, 10], 1, &[8, 0, 0, 0]),
            eth_ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, &keepalive),
            vec![0u8; 14], // not IPv4
        ];
        let s = CaptureSummary::from_pcap(&pcap(&frames)).unwrap();
        assert_eq!(s, CaptureSummary { esp_in_udp: 1, esp_raw: 1, cleartext_lan: 1, other: 1 });
        assert!(CaptureSummary::from_pcap(&[0; 10]).is_err());
    }
}
