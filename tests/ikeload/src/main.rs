//! `wasmsec-ikeload`: drives IKEv2 handshakes (IKE_SA_INIT + IKE_AUTH with
//! a PSK and the first CHILD SA) against one responder, many at once, and
//! prints the setup rate, the latency of each setup and the responder's CPU
//! time: the handshake benchmark of issue #16 (`cargo xtask
//! bench-handshakes`, tests/bench/handshakes.sh), where the same load runs
//! against wasmsec and against strongSwan.
//!
//! The initiators are wasmsec's own IKE engine (`wasmsec-ike`, natively,
//! on the host's key schedule), one connection per source address; each
//! completed setup is deleted again (INFORMATIONAL DELETE, RFC 7296
//! section 1.4.1) so the responder's tables stay small, and the next setup
//! starts from the next free address. Each initiator has an identity of
//! its own, `iN.` before `--id`. A setup counts when its CHILD SA is
//! installed; one that ends without (the responder refused, or never
//! answered after the retransmissions) counts as failed.
//!
//! With `--standing N`, N setups come first and stay up (not measured),
//! so the measured ones meet a responder that holds N IKE SAs; they are
//! deleted at the end (`--hold S` seconds after the measured setups: the
//! daemon memory benchmark measures the responder meanwhile). With
//! `--children K` each IKE SA has K CHILD SAs, the others made by
//! CREATE_CHILD_SA (RFC 7296 section 1.3.1) once IKE_AUTH made the first;
//! a setup counts when all K are installed.
//!
//! Output: one line of `key=value` pairs (see `Report`).
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use wasmsec_crypto::Vault;
use wasmsec_crypto::ike_engine::EngineCrypto;
use wasmsec_ike::{
    ChildConfig, ConnectionConfig, Datagram, Endpoint, Engine, Event, IKE_PORT, NAT_T_PORT, SaChange, Timing, Transmit,
};
use zeroize::Zeroizing;

mod args;
mod report;
mod socket;

use args::Args;
use report::Report;
use socket::Socket;

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wasmsec-ikeload: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(report) => {
            println!("{}", report.line(&args));
            if report.done == 0 && args.setups > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("wasmsec-ikeload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One initiator: a connection of the engine with its own source address.
struct Initiator {
    name: String,
    /// An IKE SA of this connection exists (set up, up, or being deleted).
    busy: bool,
    /// When the setup in flight started.
    started: Option<Instant>,
    /// CHILD SAs of the setup in flight installed so far.
    installed: usize,
}

fn run(args: &Args) -> Result<Report, String> {
    let psk = std::fs::read(&args.psk_file).map_err(|e| format!("{}: {e}", args.psk_file))?;
    let mut vault = Vault::new();
    let psk = vault.insert_psk(Zeroizing::new(psk));
    let mut crypto = EngineCrypto::new(vault);
    // Retransmit early enough that a responder dropping under load shows
    // as latency, and give up within seconds so it shows as failures.
    let timing = Timing { retransmit_base_ms: 500, retransmit_tries: 4, ..Timing::default() };
    let mut engine = Engine::new(timing);
    let mut inits = Vec::with_capacity(args.sources.len());
    let mut by_name = HashMap::new();
    let ts_addrs = addresses(&args.local_ts)?;
    for (i, src) in args.sources.iter().enumerate() {
        let name = format!("i{i}");
        engine
            .add_connection(ConnectionConfig {
                name: name.clone(),
                local_addrs: vec![IpAddr::V4(*src)],
                remote_addrs: vec![IpAddr::V4(args.server)],
                // An identity each: a responder may drop the other IKE
                // SAs of an identity that sends INITIAL_CONTACT (strongSwan
                // does, whatever their addresses).
                local_id: format!("i{i}.{}", args.id),
                remote_id: args.remote_id.clone(),
                psk,
                ike_proposals: args.proposals.clone(),
                children: (0..args.children)
                    .map(|j| ChildConfig {
                        name: format!("load{j}"),
                        local_ts: vec![child_ts(&args.local_ts, &ts_addrs, args.children, j)],
                        remote_ts: vec![args.remote_ts.clone()],
                        esp_proposals: args.esp.clone(),
                        ..ChildConfig::default()
                    })
                    .collect(),
                // No rekeys, no liveness checks, no keepalives.
                ..ConnectionConfig::default()
            })
            .map_err(|e| format!("connection {name}: {e:?}"))?;
        by_name.insert(name.clone(), i);
        inits.push(Initiator { name, busy: false, started: None, installed: 0 });
    }
    // Port 500, and 4500 for when the engine moves there: after NAT
    // detection (RFC 7296 section 2.23), which strongSwan with
    // kernel-libipsec always reports, to get ESP in UDP.
    let sock = Socket::bind(IKE_PORT).map_err(|e| format!("UDP port {IKE_PORT}: {e}"))?;
    let nat_t = Socket::bind(NAT_T_PORT).map_err(|e| format!("UDP port {NAT_T_PORT}: {e}"))?;
    let server = SocketAddrV4::new(args.server, IKE_PORT);

    let clock = Instant::now();
    let now = |c: &Instant| c.elapsed().as_millis() as u64;
    let mut deadline = clock + Duration::from_secs(args.seconds);
    let mut report = Report::start(args.responder_pid);
    // Setting up the standing SAs (their setups are not measured), and
    // how many are up.
    let mut warming = args.standing > 0;
    let mut kept: Vec<usize> = Vec::with_capacity(args.standing);
    let mut next = 0usize;
    let mut started = 0u64;
    let mut in_flight = 0usize;
    let mut to_delete: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut last_checkpoint_drain = Instant::now();
    let mut finished: Option<Instant> = None;
    loop {
        let out_of_time = Instant::now() >= deadline;
        // Keep `in_flight` setups going, each from the next free address.
        let goal = if warming { args.standing as u64 } else { args.setups };
        while !out_of_time && in_flight < args.in_flight && started < goal {
            let Some(i) = (0..inits.len()).map(|k| (next + k) % inits.len()).find(|&i| !inits[i].busy) else {
                break;
            };
            next = (i + 1) % inits.len();
            let t = now(&clock);
            engine.initiate(t, &inits[i].name, &mut crypto).map_err(|e| format!("initiate: {e:?}"))?;
            inits[i].busy = true;
            inits[i].started = Some(Instant::now());
            inits[i].installed = 0;
            in_flight += 1;
            started += 1;
        }
        if warming && in_flight == 0 && (started >= goal || out_of_time) {
            // The standing SAs are up: the measured setups start now.
            warming = false;
            started = 0;
            report = Report::start(args.responder_pid);
            deadline = Instant::now() + Duration::from_secs(args.seconds);
            continue;
        }
        if !warming && in_flight == 0 && (started >= args.setups || out_of_time) {
            // Measured up to the last setup; then the last DELETEs get
            // their answers (at most 5 s), so the generator leaves
            // nothing behind and `ike_sas_left` counts unanswered ones.
            let since = *finished.get_or_insert_with(|| {
                report.finish();
                Instant::now()
            });
            // The standing SAs still up (one the responder deleted is not),
            // after the hold.
            // With `--keep N`, N of them stay `--keep-hold` seconds more
            // (the responder holds a few of many, as after a site went).
            let hold = Duration::from_secs(args.hold);
            let last = hold + Duration::from_secs(args.keep_hold);
            for (at, stay) in [(hold, args.keep), (last, 0)] {
                if since.elapsed() >= at && kept.len() > stay {
                    for i in kept.drain(stay..).filter(|&i| inits[i].busy) {
                        let t = now(&clock);
                        engine.terminate(t, &inits[i].name, &mut crypto).map_err(|e| format!("terminate: {e:?}"))?;
                    }
                }
            }
            if since.elapsed() >= last
                && (engine.ike_sa_count() == 0 || since.elapsed() > last + Duration::from_secs(5))
            {
                break;
            }
        }
        if out_of_time && Instant::now() >= deadline + Duration::from_secs(10) {
            report.failed += in_flight as u64;
            break;
        }
        send_all(&mut engine, [&sock, &nat_t], server, &mut report);
        // What the engine decided: setups done, SAs gone.
        while let Some(c) = engine.poll_sa_change() {
            match c {
                SaChange::Install(child) => {
                    let Some(&i) = by_name.get(&child.connection) else { continue };
                    if inits[i].started.is_some() {
                        inits[i].installed += 1;
                    }
                    if inits[i].installed < args.children {
                        continue;
                    }
                    if let Some(t0) = inits[i].started.take() {
                        in_flight -= 1;
                        if warming {
                            kept.push(i);
                        } else {
                            report.done(t0.elapsed());
                            to_delete.push(i);
                        }
                    }
                }
                SaChange::Delete { inbound_key, outbound_key, .. } => {
                    crypto.esp.remove(&inbound_key);
                    crypto.esp.remove(&outbound_key);
                }
                _ => {}
            }
        }
        while let Some(e) = engine.poll_event() {
            match e {
                Event::IkeDown { connection, .. } => {
                    let Some(&i) = by_name.get(&connection) else { continue };
                    inits[i].busy = false;
                    if inits[i].started.take().is_some() {
                        report.failed += 1;
                        in_flight -= 1;
                    }
                }
                Event::Log { level: wasmsec_ike::Level::Warn, connection, message } => {
                    report.warn(&connection, &message);
                }
                _ => {}
            }
        }
        for i in to_delete.drain(..) {
            let t = now(&clock);
            engine.terminate(t, &inits[i].name, &mut crypto).map_err(|e| format!("terminate: {e:?}"))?;
        }
        send_all(&mut engine, [&sock, &nat_t], server, &mut report);
        if last_checkpoint_drain.elapsed() > Duration::from_millis(200) {
            // The engine keeps state checkpoints for a host that restarts
            // it; a load generator has no use for them.
            drop(engine.poll_checkpoints());
            last_checkpoint_drain = Instant::now();
        }
        // Wait for an answer, or until the engine's next timer.
        let t = now(&clock);
        let wait = engine.next_timeout().map_or(20, |at| at.saturating_sub(t).min(20)) as i32;
        let mut pfd = [sock.fd(), nat_t.fd()].map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(pfd.as_mut_ptr(), 2, wait) };
        for (s, port) in [(&sock, IKE_PORT), (&nat_t, NAT_T_PORT)] {
            loop {
                let (n, from, to) = match s.recv(&mut buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("receive: {e}")),
                };
                // On 4500 IKE follows the non-ESP marker (RFC 3948 section
                // 2.2); anything else there is not for us.
                let data = match port {
                    NAT_T_PORT if n > 4 && buf[..4] == [0; 4] => &buf[4..n],
                    NAT_T_PORT => continue,
                    _ => &buf[..n],
                };
                let d = Datagram {
                    local: Endpoint { addr: IpAddr::V4(to), port },
                    remote: Endpoint { addr: IpAddr::V4(*from.ip()), port: from.port() },
                    data: data.to_vec(),
                };
                engine.handle_datagram(now(&clock), d, &mut crypto);
            }
        }
        if engine.next_timeout().is_some_and(|at| at <= now(&clock)) {
            engine.tick(now(&clock), &mut crypto);
        }
    }
    if finished.is_none() {
        report.finish();
    }
    report.left = engine.ike_sa_count();
    Ok(report)
}

/// Send what the engine queued, from the port it chose: on 4500 behind
/// the non-ESP marker.
fn send_all(engine: &mut Engine, socks: [&Socket; 2], server: SocketAddrV4, report: &mut Report) {
    while let Some(t) = engine.poll_transmit() {
        let Transmit::Datagram(d) = t else { continue };
        let IpAddr::V4(from) = d.local.addr else { continue };
        let to = match d.remote.addr {
            IpAddr::V4(a) => SocketAddrV4::new(a, d.remote.port),
            IpAddr::V6(_) => server,
        };
        let r = if d.local.port == NAT_T_PORT {
            let mut m = vec![0u8; 4];
            m.extend_from_slice(&d.data);
            socks[1].send(from, to, &m)
        } else {
            socks[0].send(from, to, &d.data)
        };
        if let Err(e) = r {
            report.send_error(&e);
        }
    }
}

/// The local traffic selector of child `j` of `children`: the whole of
/// `local_ts` for one, else its `j`-th address (of `addrs`) alone.
fn child_ts(local_ts: &str, addrs: &[Ipv4Addr], children: usize, j: usize) -> String {
    if children == 1 { local_ts.to_string() } else { format!("{}/32", addrs[j]) }
}

/// The addresses of `cidr` (IPv4), without those ending in .0 or .255.
pub fn addresses(cidr: &str) -> Result<Vec<Ipv4Addr>, String> {
    let (a, len) = cidr.split_once('/').ok_or_else(|| format!("{cidr}: not a CIDR prefix"))?;
    let a: Ipv4Addr = a.parse().map_err(|_| format!("{cidr}: not an IPv4 prefix"))?;
    let len: u32 = len.parse().ok().filter(|l| (8..=32).contains(l)).ok_or(format!("{cidr}: length 8-32"))?;
    let base = u32::from(a) & (u32::MAX << (32 - len));
    let count = 1u64 << (32 - len);
    Ok((0..count).map(|k| Ipv4Addr::from(base + k as u32)).filter(|a| !matches!(a.octets()[3], 0 | 255)).collect())
}
