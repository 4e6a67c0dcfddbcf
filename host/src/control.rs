//! The control plane: the IKE component, its sockets (UDP 500, and 4500
//! through the inbound data path), the admin socket, and the hand-off of
//! negotiated CHILD SAs to the data-path threads.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::config::Encapsulation;
use crate::dataplane::{DpControl, DpLink, Peer, UP_ACQUIRE, UP_EXPIRE, UP_IKE};
use crate::ike::{self, Action, Datagram, Endpoint, IkeInstance, Level};
use crate::keystore::Keystore;
use crate::runtime::{InboundSa, OutboundSa, SaLimits, TrafficSelector};
use crate::stats::Stats;
use crate::sys;

/// An IKE SA as the admin socket shows it.
#[derive(Debug, Clone, serde::Serialize)]
struct IkeInfo {
    connection: String,
    spi: String,
    proposal: String,
    initiator: bool,
    local: String,
    remote: String,
}

/// A CHILD SA as the admin socket shows it.
#[derive(Debug, Clone, serde::Serialize)]
struct ChildInfo {
    connection: String,
    child: String,
    /// The ESP transform, strongSwan syntax (`aes256gcm16`).
    proposal: String,
    ike_spi: String,
    inbound_spi: String,
    outbound_spi: String,
    local_ts: Vec<String>,
    remote_ts: Vec<String>,
    peer: String,
    encap: bool,
    #[serde(skip)]
    keys: (u64, u64),
}

/// A connection with `start_action = "trap"`: its remote selectors.
pub struct Trap {
    pub connection: String,
    pub remote: Vec<crate::config::Prefix>,
}

pub struct ControlPlane {
    pub ike: IkeInstance,
    pub sock500: UdpSocket,
    pub sock4500: UdpSocket,
    /// IKE datagrams from port 4500 and acquires, from the data path.
    pub up: UnixDatagram,
    pub outbound: DpLink,
    pub inbound: DpLink,
    pub listener: Option<UnixListener>,
    pub listen: Ipv4Addr,
    pub esp_keys: Arc<Keystore>,
    pub stats: Arc<Stats>,
    pub traps: Vec<Trap>,
    pub replay_window: u32,
    /// Wireshark `esp_sa` export of every CHILD SA (debugging only).
    pub esp_keylog: Option<std::path::PathBuf>,
    /// Inbound halves of deleted CHILD SAs that still accept packets until
    /// their time (control-loop milliseconds): (until, SPI, key).
    pub lingering: Vec<(u64, u32, u64)>,
    /// Outbound SAs of rekeys we answered, waiting for `activate-outbound`.
    pub deferred: std::collections::HashMap<u32, (OutboundSa, Peer)>,
}

fn ep(e: &Endpoint) -> Option<SocketAddr> {
    let a: IpAddr = match e.address.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(&e.address[..]).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(&e.address[..]).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(a, e.port))
}

fn endpoint(a: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint { address: a.octets().to_vec(), port }
}

fn esp_ts(t: &[ike::TrafficSelector]) -> Vec<TrafficSelector> {
    t.iter()
        .map(|t| TrafficSelector {
            ip_protocol: t.ip_protocol,
            start_port: t.start_port,
            end_port: t.end_port,
            start_address: t.start_address.clone(),
            end_address: t.end_address.clone(),
        })
        .collect()
}

fn show_ts(t: &[ike::TrafficSelector]) -> Vec<String> {
    t.iter()
        .map(|t| {
            let w = wasmsec_wire::ike::TrafficSelector {
                ts_type: if t.start_address.len() == 4 { 7 } else { 8 },
                ip_protocol: t.ip_protocol,
                start_port: t.start_port,
                end_port: t.end_port,
                start: t.start_address.clone(),
                end: t.end_address.clone(),
            };
            wasmsec_ike::ts::show(&w)
        })
        .collect()
}

impl ControlPlane {
    fn now(start: Instant) -> u64 {
        start.elapsed().as_millis() as u64
    }

    /// Run until a stop signal. A trap in the IKE guest stops the daemon:
    /// IKE state is not yet checkpointed, so a restart would orphan SAs.
    pub fn run(mut self) {
        let start = Instant::now();
        let mut ike_sas: BTreeMap<u64, IkeInfo> = BTreeMap::new();
        let mut children: Vec<ChildInfo> = Vec::new();
        match self.ike.autostart() {
            Ok(names) => {
                for n in names {
                    self.initiate(Self::now(start), &n);
                }
            }
            Err(e) => return self.fatal(e),
        }
        if let Err(e) = self.actions(Self::now(start), &mut ike_sas, &mut children) {
            return self.fatal(e);
        }
        let mut fds = vec![self.sock500.as_raw_fd(), self.up.as_raw_fd()];
        if let Some(l) = &self.listener {
            fds.push(l.as_raw_fd());
        }
        while !sys::stop_requested() {
            let now = Self::now(start);
            let due = match self.ike.next_timeout() {
                Ok(t) => t,
                Err(e) => return self.fatal(e),
            };
            let due = due.into_iter().chain(self.lingering.iter().map(|l| l.0)).min();
            let wait = due.map_or(200, |t| t.saturating_sub(now).min(200)) as i32;
            let ready = sys::poll_readable(&fds, wait).unwrap_or_default();
            let now = Self::now(start);
            let r = (|| -> anyhow::Result<()> {
                if ready.first() == Some(&true) {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match self.sock500.recv_from(&mut buf) {
                            Ok((n, SocketAddr::V4(from))) => {
                                let d = Datagram {
                                    local: endpoint(self.listen, self.sock500.local_addr()?.port()),
                                    remote: endpoint(*from.ip(), from.port()),
                                    data: buf[..n].to_vec(),
                                };
                                self.ike.handle_datagram(now, &d)?;
                            }
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => {
                                debug!(error = %e, "UDP 500 receive failed");
                                break;
                            }
                        }
                    }
                }
                if ready.get(1) == Some(&true) {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = self.up.recv(&mut buf) {
                        let m = &buf[..n];
                        match m.first() {
                            Some(&UP_IKE) if n >= 7 => {
                                let from = Ipv4Addr::new(m[1], m[2], m[3], m[4]);
                                let port = u16::from_be_bytes([m[5], m[6]]);
                                let d = Datagram {
                                    local: endpoint(self.listen, self.sock4500.local_addr()?.port()),
                                    remote: endpoint(from, port),
                                    data: m[7..].to_vec(),
                                };
                                self.ike.handle_datagram(now, &d)?;
                            }
                            Some(&UP_ACQUIRE) if n >= 9 => {
                                let dst = Ipv4Addr::new(m[5], m[6], m[7], m[8]);
                                self.acquire(now, dst)?;
                            }
                            Some(&UP_EXPIRE) if n >= 6 => {
                                let spi = u32::from_be_bytes([m[1], m[2], m[3], m[4]]);
                                self.ike.child_expired(now, spi, m[5] != 0)?;
                            }
                            _ => {}
                        }
                    }
                }
                if ready.get(2) == Some(&true) {
                    if let Some(l) = &self.listener {
                        if let Ok((s, _)) = l.accept() {
                            self.admin(now, s, &ike_sas, &children)?;
                        }
                    }
                }
                if due.is_some_and(|t| t <= now) {
                    self.ike.tick(now)?;
                    self.end_lingering(now);
                }
                self.actions(now, &mut ike_sas, &mut children)
            })();
            if let Err(e) = r {
                return self.fatal(e);
            }
        }
    }

    fn fatal(&self, e: anyhow::Error) {
        tracing::error!(error = %e, "the IKE guest trapped; stopping the daemon");
        sys::request_stop();
    }

    fn initiate(&mut self, now: u64, name: &str) {
        match self.ike.initiate(now, name) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(connection = name, error = %e, "cannot initiate"),
            Err(e) => self.fatal(e),
        }
    }

    /// Traffic without an SA: start the `trap` connection that covers it.
    fn acquire(&mut self, now: u64, dst: Ipv4Addr) -> anyhow::Result<()> {
        let hit: Vec<String> = self
            .traps
            .iter()
            .filter(|t| {
                t.remote.iter().any(|p| match p.addr {
                    IpAddr::V4(net) => {
                        let mask = if p.len == 0 { 0 } else { u32::MAX << (32 - p.len) };
                        u32::from(net) & mask == u32::from(dst) & mask
                    }
                    IpAddr::V6(_) => false,
                })
            })
            .map(|t| t.connection.clone())
            .collect();
        for name in hit {
            if !self.ike.active(&name)? {
                info!(connection = %name, destination = %dst, "traffic for a trap connection: initiating");
                self.initiate(now, &name);
            }
        }
        Ok(())
    }

    fn send(&self, d: &Datagram) {
        let Some(SocketAddr::V4(to)) = ep(&d.remote) else {
            return;
        };
        let r = if d.local.port == self.sock4500.local_addr().map(|a| a.port()).unwrap_or(4500) {
            // RFC 3948 section 2.2: IKE on the NAT-T port behind the non-ESP marker.
            let mut m = Vec::with_capacity(4 + d.data.len());
            m.extend_from_slice(&wasmsec_wire::udp_encap::NON_ESP_MARKER);
            m.extend_from_slice(&d.data);
            self.sock4500.send_to(&m, to)
        } else {
            self.sock500.send_to(&d.data, to)
        };
        if let Err(e) = r {
            // Debug level: answers to spoofed floods would otherwise flood the log.
            debug!(to = %to, error = %e, "IKE send failed");
            crate::stats::inc(&self.stats.tx_errors);
        }
    }

    /// Remove the lingering inbound SAs whose time is up, and their keys.
    fn end_lingering(&mut self, now: u64) {
        let (done, keep): (Vec<_>, Vec<_>) = self.lingering.iter().partition(|l| l.0 <= now);
        self.lingering = keep;
        for (_, spi, key) in done {
            self.inbound.send(DpControl::RemoveInbound { spi });
            self.esp_keys.remove(key);
        }
    }

    fn actions(
        &mut self,
        now: u64,
        ike_sas: &mut BTreeMap<u64, IkeInfo>,
        children: &mut Vec<ChildInfo>,
    ) -> anyhow::Result<()> {
        for a in self.ike.poll_actions()? {
            match a {
                Action::Send(d) => self.send(&d),
                Action::ActivateOutbound(spi) => {
                    if let Some((sa, peer)) = self.deferred.remove(&spi) {
                        self.outbound.send(DpControl::AddOutbound { sa, peer });
                    }
                }
                Action::PeerMoved((spis, remote)) => {
                    if let Some(SocketAddr::V4(to)) = ep(&remote) {
                        let spis: Vec<String> = spis.iter().map(|s| format!("{s:08x}")).collect();
                        for c in children.iter_mut().filter(|c| spis.contains(&c.outbound_spi) && c.encap) {
                            c.peer = to.to_string();
                            let outbound_spi = u32::from_str_radix(&c.outbound_spi, 16).unwrap_or(0);
                            let peer = Peer { address: *to.ip(), port: to.port(), encapsulation: Encapsulation::Udp };
                            self.outbound.send(DpControl::MovePeer { outbound_spi, peer });
                        }
                    }
                }
                Action::Keepalive((_, remote)) => {
                    // RFC 3948 section 2.3: one 0xFF byte, no marker.
                    if let Some(SocketAddr::V4(to)) = ep(&remote) {
                        if let Err(e) = self.sock4500.send_to(&wasmsec_wire::udp_encap::KEEPALIVE, to) {
                            debug!(to = %to, error = %e, "NAT keepalive send failed");
                        }
                    }
                }
                Action::InstallChild(c) => self.install(c, children),
                Action::DeleteChild(d) => {
                    self.deferred.remove(&d.outbound_spi);
                    self.outbound.send(DpControl::RemoveOutbound { spi: d.outbound_spi });
                    self.esp_keys.remove(d.outbound_key);
                    if d.keep_inbound_ms == 0 {
                        self.inbound.send(DpControl::RemoveInbound { spi: d.inbound_spi });
                        self.esp_keys.remove(d.inbound_key);
                    } else {
                        self.lingering.push((now + u64::from(d.keep_inbound_ms), d.inbound_spi, d.inbound_key));
                    }
                    children.retain(|c| c.keys != (d.inbound_key, d.outbound_key));
                }
                Action::IkeUp(up) => {
                    let show = |e: &Endpoint| ep(e).map(|a| a.to_string()).unwrap_or_default();
                    ike_sas.insert(
                        up.ike_spi,
                        IkeInfo {
                            connection: up.connection,
                            spi: format!("{:016x}", up.ike_spi),
                            proposal: up.proposal,
                            initiator: up.initiator,
                            local: show(&up.local),
                            remote: show(&up.remote),
                        },
                    );
                }
                Action::IkeDown((_, spi)) => {
                    ike_sas.remove(&spi);
                }
                Action::Log(l) => match l.level {
                    Level::Info => info!(connection = %l.connection, "{}", l.message),
                    Level::Warn => warn!(connection = %l.connection, "{}", l.message),
                },
            }
        }
        Ok(())
    }

    fn install(&mut self, c: ike::ChildSa, children: &mut Vec<ChildInfo>) {
        let Some(remote) = ep(&c.remote) else { return };
        let IpAddr::V4(peer_addr) = remote.ip() else {
            warn!(connection = %c.connection, "IPv6 peers are not supported by the data plane yet");
            return;
        };
        let peer = Peer {
            address: peer_addr,
            port: if c.encap { remote.port() } else { 0 },
            encapsulation: if c.encap { Encapsulation::Udp } else { Encapsulation::None },
        };
        let limits = SaLimits {
            soft_bytes: c.limits.soft_bytes,
            soft_packets: c.limits.soft_packets,
            hard_bytes: c.limits.hard_bytes,
            hard_packets: c.limits.hard_packets,
        };
        // Inbound first: the peer may send ESP as soon as it has our answer.
        let float_peer = match remote {
            SocketAddr::V4(a) if c.encap => Some(a),
            _ => None,
        };
        self.inbound.send(DpControl::AddInbound {
            outbound_spi: Some(c.outbound_spi),
            peer: float_peer,
            sa: InboundSa {
                spi: c.inbound_spi,
                key: c.inbound_key,
                esn: c.esn,
                replay_window: self.replay_window,
                highest_seq: 0,
                local_ts: esp_ts(&c.local_ts),
                remote_ts: esp_ts(&c.remote_ts),
                limits,
            },
        });
        let out = OutboundSa {
            spi: c.outbound_spi,
            key: c.outbound_key,
            peer: 0,
            esn: c.esn,
            next_seq: 1,
            pad_align: ike::esp_algorithm(c.encr, c.key_bits, c.integ).map_or(4, |a| a.pad_align()),
            local_ts: esp_ts(&c.local_ts),
            remote_ts: esp_ts(&c.remote_ts),
            limits,
        };
        self.export_esp_keys(&c, remote);
        if c.outbound_deferred {
            self.deferred.insert(c.outbound_spi, (out, peer));
        } else {
            self.outbound.send(DpControl::AddOutbound { sa: out, peer });
        }
        children.push(ChildInfo {
            connection: c.connection.clone(),
            child: c.child.clone(),
            proposal: ike::esp_algorithm(c.encr, c.key_bits, c.integ).map_or_else(|| "?".into(), |a| a.name()),
            ike_spi: format!("{:016x}", c.ike_spi),
            inbound_spi: format!("{:08x}", c.inbound_spi),
            outbound_spi: format!("{:08x}", c.outbound_spi),
            local_ts: show_ts(&c.local_ts),
            remote_ts: show_ts(&c.remote_ts),
            peer: remote.to_string(),
            encap: c.encap,
            keys: (c.inbound_key, c.outbound_key),
        });
    }

    /// Append the CHILD SA's keys to the `esp_sa` file, if export is on.
    fn export_esp_keys(&mut self, c: &ike::ChildSa, remote: SocketAddr) {
        let Some(path) = &self.esp_keylog else { return };
        let local = ep(&c.local).map(|a| a.ip().to_string()).unwrap_or_default();
        let remote = remote.ip().to_string();
        let state = self.ike.store.data_mut();
        let lines = [
            (local.as_str(), remote.as_str(), c.outbound_spi, state.take_esp_export(c.outbound_key)),
            (remote.as_str(), local.as_str(), c.inbound_spi, state.take_esp_export(c.inbound_key)),
        ];
        for (src, dst, spi, keys) in lines {
            let Some(keys) = keys else { continue };
            if let Err(e) = crate::keylog::append_secret_line(path, &crate::keylog::esp_sa_line(src, dst, spi, &keys)) {
                warn!(file = %path.display(), error = %e, "cannot write the ESP key log");
            }
        }
    }

    /// One admin command per connection: `initiate NAME`, `terminate NAME`,
    /// `status`.
    fn admin(
        &mut self,
        now: u64,
        s: UnixStream,
        ike_sas: &BTreeMap<u64, IkeInfo>,
        children: &[ChildInfo],
    ) -> anyhow::Result<()> {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        let _ = BufReader::new(&s).read_line(&mut line);
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next()) {
            (Some("initiate"), Some(name)) => match self.ike.initiate(now, name)? {
                Ok(()) => format!("ok initiating {name}\n"),
                Err(e) => format!("error {e}\n"),
            },
            (Some("terminate"), Some(name)) => match self.ike.terminate(now, name)? {
                Ok(n) => format!("ok {n} IKE_SA(s) deleted\n"),
                Err(e) => format!("error {e}\n"),
            },
            (Some("status"), None) => {
                let st = self.ike.stats()?;
                let ike_list: Vec<&IkeInfo> = ike_sas.values().collect();
                let v = serde_json::json!({
                    "ike_sas": ike_list,
                    "child_sas": children,
                    "ike": {
                        "rx": st.rx, "tx": st.tx, "retransmits": st.retransmits,
                        "replayed_responses": st.replayed_responses, "malformed": st.malformed,
                        "unknown_spi": st.unknown_spi, "integrity_failed": st.integrity_failed,
                        "unexpected": st.unexpected, "ike_established": st.ike_established,
                        "child_installed": st.child_installed, "auth_failed": st.auth_failed,
                        "no_proposal": st.no_proposal, "ts_unacceptable": st.ts_unacceptable,
                        "timeouts": st.timeouts, "keepalives": st.keepalives,
                        "dpd_checks": st.dpd_checks, "dead_peers": st.dead_peers,
                        "cookies_sent": st.cookies_sent, "half_open_drops": st.half_open_drops,
                        "half_open": st.half_open, "rate_limited": st.rate_limited,
                        "rekey_collisions_won": st.rekey_collisions_won,
                        "rekey_collisions_lost": st.rekey_collisions_lost,
                        "ike_rekey_collisions_won": st.ike_rekey_collisions_won,
                        "ike_rekey_collisions_lost": st.ike_rekey_collisions_lost,
                        "temporary_failures": st.temporary_failures,
                        "lifetime_soft": st.lifetime_soft, "lifetime_hard": st.lifetime_hard,
                        "reauths": st.reauths,
                        "vault_secrets": self.ike.store.data().secrets(),
                    },
                    "esp": self.stats.snapshot(),
                });
                format!("{v}\n")
            }
            _ => "error commands: initiate NAME | terminate NAME | status\n".to_string(),
        };
        let _ = (&s).write_all(reply.as_bytes());
        Ok(())
    }
}
