//! The data-path loops: TUN -> ESP component -> socket, and back.
//!
//! Each direction has its own thread and its own ESP instance (outbound
//! SAs in one, inbound SAs in the other), so the two never contend for a
//! store. A loop reads a batch of up to `runtime.batch` packets into the
//! instance's host buffers, makes one call into the component, and acts on
//! the verdicts. Payloads are never copied into the guest.
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::Result;
use std::collections::HashMap;

use tracing::{debug, info, warn};
use wasmsec_wire::udp_encap::Datagram;

use crate::config::Encapsulation;
use crate::keystore::Keystore;
use crate::packet::PacketBuf;
use crate::runtime::{DecapVerdict, EncapVerdict, EspInstance, InboundSa, OutboundSa, Runtime};
use crate::stats::{self, Stats};
use crate::sys::{self, RawEsp, Tun};

/// Changes to a data-path thread's SAs, sent by the control plane.
#[derive(Debug)]
pub enum DpControl {
    AddOutbound {
        sa: OutboundSa,
        peer: Peer,
    },
    /// `outbound_spi` and `peer` name the SA pair's other half and where its
    /// ESP goes, so the peer's address can float (NAT-T).
    AddInbound {
        sa: InboundSa,
        outbound_spi: Option<u32>,
        peer: Option<SocketAddrV4>,
    },
    /// Authenticated ESP for the SA pair came from a new address or port
    /// (the peer's NAT mapping changed): send there from now on.
    MovePeer {
        outbound_spi: u32,
        peer: Peer,
    },
    RemoveOutbound {
        spi: u32,
    },
    RemoveInbound {
        spi: u32,
    },
}

/// The control plane's handle on one data-path thread: a channel and a
/// socket whose readability wakes the thread's poll.
pub struct DpLink {
    tx: Sender<DpControl>,
    wake: UnixDatagram,
}

/// The thread's end of a [`DpLink`].
pub struct DpInbox {
    rx: Receiver<DpControl>,
    wake: UnixDatagram,
}

pub fn dp_link() -> std::io::Result<(DpLink, DpInbox)> {
    let (a, b) = UnixDatagram::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = std::sync::mpsc::channel();
    Ok((DpLink { tx, wake: a }, DpInbox { rx, wake: b }))
}

impl DpLink {
    pub fn try_clone(&self) -> std::io::Result<DpLink> {
        Ok(DpLink { tx: self.tx.clone(), wake: self.wake.try_clone()? })
    }

    pub fn send(&self, c: DpControl) {
        if self.tx.send(c).is_ok() {
            let _ = self.wake.send(&[1]);
        }
    }
}

/// Tags of what the data path passes up to the control plane on its socket.
pub const UP_IKE: u8 = 0;
pub const UP_ACQUIRE: u8 = 1;
/// An SA passed a soft or hard limit: SPI (4 bytes), hard (the cause and
/// direction are logged here; the IKE engine needs neither).
pub const UP_EXPIRE: u8 = 2;

/// How often a loop asks its guest for SA expiries (not per batch: the
/// call would cost every batch, and a rekey does not need to start sooner).
const EXPIRY_POLL: Duration = Duration::from_millis(100);

/// Where ESP for one peer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub address: Ipv4Addr,
    pub port: u16,
    pub encapsulation: Encapsulation,
}

/// Host-side record of the SAs an instance holds, to rebuild it after a
/// trap: keys stay in the keystore, sequence numbers come from the keys'
/// high-water marks.
pub struct SaSet {
    pub keystore: Arc<Keystore>,
    pub outbound: Vec<OutboundSa>,
    pub inbound: Vec<InboundSa>,
}

impl SaSet {
    /// A new instance with these SAs installed and their keys granted.
    pub fn instantiate(&self, rt: &Runtime) -> Result<EspInstance> {
        let mut inst = rt.esp_instance()?;
        for sa in &self.outbound {
            let key = self.keystore.get(sa.key).ok_or_else(|| anyhow::anyhow!("key for SPI {:#x} missing", sa.spi))?;
            let mut sa = sa.clone();
            sa.next_seq = sa.next_seq.max(key.highest_seq() + 1);
            inst.store.data_mut().keys.grant(sa.key, key);
            inst.install_outbound(&sa)?.map_err(|e| anyhow::anyhow!("outbound SA {:#x}: {e}", sa.spi))?;
        }
        for sa in &self.inbound {
            let key = self.keystore.get(sa.key).ok_or_else(|| anyhow::anyhow!("key for SPI {:#x} missing", sa.spi))?;
            let mut sa = sa.clone();
            sa.highest_seq = sa.highest_seq.max(key.highest_seq());
            inst.store.data_mut().keys.grant(sa.key, key);
            inst.install_inbound(&sa)?.map_err(|e| anyhow::anyhow!("inbound SA {:#x}: {e}", sa.spi))?;
        }
        Ok(inst)
    }
}

/// Everything one direction's loop needs.
pub struct Loop {
    pub runtime: Arc<Runtime>,
    pub sas: SaSet,
    pub tun: Tun,
    pub udp: UdpSocket,
    pub raw: Option<RawEsp>,
    pub peers: Vec<Peer>,
    pub stats: Arc<Stats>,
    pub batch: usize,
    /// SA changes from the control plane.
    pub inbox: Option<DpInbox>,
    /// Inbound thread: tells the outbound thread when a peer moved.
    pub to_outbound: Option<DpLink>,
    /// Inbound thread: inbound SPI -> (outbound SPI, where the peer is).
    pub floats: HashMap<u32, (u32, SocketAddrV4)>,
    /// Inbound thread: SPI and source of each UDP packet of the batch.
    pub sources: Vec<Option<(u32, SocketAddrV4)>>,
    /// To the control plane: IKE datagrams from port 4500 (inbound thread)
    /// and acquires for traffic without an SA (outbound thread).
    pub up: Option<UnixDatagram>,
}

const POLL_MS: i32 = 200;

fn ensure_buffers(inst: &mut EspInstance, n: usize) {
    let b = &mut inst.store.data_mut().batch;
    if b.len() < n {
        b.resize_with(n, PacketBuf::new);
    }
}

/// What became of one batch call into the guest.
enum Call<T> {
    Done(Vec<T>),
    /// The guest trapped and was replaced; the batch is lost.
    Restarted,
    /// The guest trapped and could not be replaced: stop the daemon.
    Stop,
}

impl Loop {
    /// One batch call into the guest. A trap replaces the instance from the
    /// host's SA records; a wrong number of verdicts is counted.
    fn call<T>(
        &self,
        inst: &mut EspInstance,
        what: &str,
        n: usize,
        f: impl FnOnce(&mut EspInstance) -> Result<Vec<T>>,
    ) -> Call<T> {
        match f(inst) {
            Ok(v) => {
                if v.len() != n {
                    stats::add(&self.stats.guest_protocol_errors, n.abs_diff(v.len()) as u64);
                }
                Call::Done(v)
            }
            Err(err) => {
                warn!(direction = what, error = %err, "ESP guest trapped; restarting the instance");
                stats::inc(&self.stats.guest_restarts);
                match self.sas.instantiate(&self.runtime) {
                    Ok(i) => {
                        *inst = i;
                        ensure_buffers(inst, self.batch);
                        Call::Restarted
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot restart the ESP guest; stopping");
                        sys::request_stop();
                        Call::Stop
                    }
                }
            }
        }
    }

    /// Apply SA changes from the control plane.
    fn apply_control(&mut self, inst: &mut EspInstance) {
        let Some(inbox) = &self.inbox else { return };
        let mut buf = [0u8; 64];
        while inbox.wake.recv(&mut buf).is_ok() {}
        let msgs: Vec<DpControl> = inbox.rx.try_iter().collect();
        for m in msgs {
            let r = match m {
                DpControl::AddOutbound { mut sa, peer } => {
                    let idx = match self.peers.iter().position(|p| *p == peer) {
                        Some(i) => i,
                        None => {
                            self.peers.push(peer);
                            self.peers.len() - 1
                        }
                    };
                    sa.peer = idx as u32;
                    info!(spi = format_args!("{:08x}", sa.spi), peer = %peer.address, "data path: sending on outbound SA");
                    self.install(inst, Some(sa), None)
                }
                DpControl::AddInbound { sa, outbound_spi, peer } => {
                    if let (Some(o), Some(p)) = (outbound_spi, peer) {
                        self.floats.insert(sa.spi, (o, p));
                    }
                    info!(spi = format_args!("{:08x}", sa.spi), "data path: accepting on inbound SA");
                    self.install(inst, None, Some(sa))
                }
                DpControl::MovePeer { outbound_spi, peer } => {
                    if let Some(sa) = self.sas.outbound.iter().find(|s| s.spi == outbound_spi) {
                        if let Some(p) = self.peers.get_mut(sa.peer as usize) {
                            info!(from = %p.address, to = %peer.address, port = peer.port, "peer moved (NAT mapping changed): following it");
                            *p = peer;
                        }
                    }
                    Ok(())
                }
                DpControl::RemoveOutbound { spi } => {
                    info!(spi = format_args!("{spi:08x}"), "data path: outbound SA removed");
                    if let Some(pos) = self.sas.outbound.iter().position(|s| s.spi == spi) {
                        let sa = self.sas.outbound.remove(pos);
                        inst.store.data_mut().keys.revoke(sa.key);
                    }
                    inst.remove_outbound(spi).map(|_| ())
                }
                DpControl::RemoveInbound { spi } => {
                    info!(spi = format_args!("{spi:08x}"), "data path: inbound SA removed");
                    self.floats.remove(&spi);
                    if let Some(pos) = self.sas.inbound.iter().position(|s| s.spi == spi) {
                        let sa = self.sas.inbound.remove(pos);
                        inst.store.data_mut().keys.revoke(sa.key);
                    }
                    inst.remove_inbound(spi).map(|_| ())
                }
            };
            if let Err(e) = r {
                warn!(error = %e, "SA change failed");
            }
        }
    }

    fn install(&mut self, inst: &mut EspInstance, out: Option<OutboundSa>, inb: Option<InboundSa>) -> Result<()> {
        let handle = out.as_ref().map(|s| s.key).or(inb.as_ref().map(|s| s.key)).unwrap_or(0);
        let key = self.sas.keystore.get(handle).ok_or_else(|| anyhow::anyhow!("key handle unknown to the keystore"))?;
        inst.store.data_mut().keys.grant(handle, key);
        if let Some(sa) = out {
            inst.install_outbound(&sa)?.map_err(|e| anyhow::anyhow!("outbound SA {:#010x}: {e}", sa.spi))?;
            self.sas.outbound.push(sa);
        }
        if let Some(sa) = inb {
            inst.install_inbound(&sa)?.map_err(|e| anyhow::anyhow!("inbound SA {:#010x}: {e}", sa.spi))?;
            self.sas.inbound.push(sa);
        }
        Ok(())
    }

    /// Pass the guest's SA expiries up to the control plane, at most every
    /// [`EXPIRY_POLL`].
    fn report_expiries(&self, inst: &mut EspInstance, last: &mut Instant) {
        if last.elapsed() < EXPIRY_POLL {
            return;
        }
        *last = Instant::now();
        let expiries = match inst.take_expiries() {
            Ok(x) => x,
            // A trap here surfaces on the next batch call, which restarts the guest.
            Err(e) => return warn!(error = %e, "cannot read SA expiries"),
        };
        for x in expiries {
            info!(spi = format_args!("{:08x}", x.spi), outbound = x.outbound, hard = x.hard, cause = ?x.cause, "SA lifetime reached");
            let mut m = vec![UP_EXPIRE];
            m.extend_from_slice(&x.spi.to_be_bytes());
            m.push(u8::from(x.hard));
            match &self.up {
                Some(up) => {
                    let _ = up.send(&m);
                }
                None => warn!(spi = format_args!("{:08x}", x.spi), "SA lifetime reached, but no IKE to rekey it"),
            }
        }
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inbox.as_ref().map(|i| i.wake.as_raw_fd())
    }

    /// TUN -> encap -> UDP/raw ESP.
    pub fn run_outbound(mut self, mut inst: EspInstance) {
        ensure_buffers(&mut inst, self.batch);
        let mut fds = vec![self.tun.as_raw_fd()];
        fds.extend(self.wake_fd());
        let mut last_acquire = Instant::now() - Duration::from_secs(10);
        let mut last_expiry = Instant::now();
        while !sys::stop_requested() {
            self.report_expiries(&mut inst, &mut last_expiry);
            match sys::poll_readable(&fds, POLL_MS) {
                Ok(r) => {
                    if r.get(1) == Some(&true) {
                        self.apply_control(&mut inst);
                    }
                    if !r[0] {
                        continue;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "poll on TUN failed");
                    continue;
                }
            }
            let st = inst.store.data_mut();
            let mut n = 0;
            while n < self.batch {
                match self.tun.recv(st.batch[n].recv_area()) {
                    Ok(len) => {
                        st.batch[n].set_received(len);
                        n += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        warn!(error = %e, "TUN read failed");
                        break;
                    }
                }
            }
            if n == 0 {
                continue;
            }
            st.count = n;
            stats::add(&self.stats.tun_rx_packets, n as u64);
            let verdicts = match self.call(&mut inst, "outbound", n, EspInstance::encap) {
                Call::Done(v) => v,
                Call::Restarted => continue,
                Call::Stop => return,
            };
            let st = inst.store.data();
            for (p, v) in st.batch[..n].iter().zip(verdicts) {
                match v {
                    EncapVerdict::Send(peer) => self.send(peer, p.data()),
                    EncapVerdict::Drop(r) => {
                        debug!(reason = r.name(), "outbound drop");
                        self.stats.out_drop(r);
                        // Traffic without an SA may start a `trap` connection.
                        if r == crate::runtime::DropReason::NoPolicy
                            && last_acquire.elapsed() > Duration::from_millis(500)
                        {
                            if let (Some(up), Ok(ip)) = (&self.up, wasmsec_wire::ipv4::Packet::new_checked(p.data())) {
                                let mut m = vec![UP_ACQUIRE];
                                m.extend_from_slice(&ip.src_addr());
                                m.extend_from_slice(&ip.dst_addr());
                                let _ = up.send(&m);
                                last_acquire = Instant::now();
                            }
                        }
                    }
                }
            }
        }
    }

    fn send(&self, peer: u32, data: &[u8]) {
        let Some(p) = self.peers.get(peer as usize) else {
            stats::inc(&self.stats.guest_protocol_errors);
            return;
        };
        let r = match (p.encapsulation, &self.raw) {
            (Encapsulation::Udp, _) => self.udp.send_to(data, SocketAddrV4::new(p.address, p.port)),
            (Encapsulation::None, Some(raw)) => raw.send_to(data, p.address),
            (Encapsulation::None, None) => Err(std::io::Error::other("no raw ESP socket")),
        };
        match r {
            Ok(_) => {
                stats::inc(&self.stats.esp_tx_packets);
                stats::add(&self.stats.esp_tx_bytes, data.len() as u64);
            }
            Err(e) => {
                debug!(error = %e, "ESP send failed");
                stats::inc(&self.stats.tx_errors);
            }
        }
    }

    /// UDP/raw ESP -> decap -> TUN.
    pub fn run_inbound(mut self, mut inst: EspInstance) {
        ensure_buffers(&mut inst, self.batch);
        // Socket order in `fds`: UDP, then raw ESP if any, then the wake socket.
        let mut fds = vec![self.udp.as_raw_fd(), self.raw.as_ref().map_or(-1, |r| r.as_raw_fd())];
        fds.extend(self.wake_fd());
        let mut last_expiry = Instant::now();
        while !sys::stop_requested() {
            self.report_expiries(&mut inst, &mut last_expiry);
            let ready = match sys::poll_readable(&fds, POLL_MS) {
                Ok(r) if r.iter().any(|x| *x) => r,
                Ok(_) => continue,
                Err(e) => {
                    warn!(error = %e, "poll on sockets failed");
                    continue;
                }
            };
            if ready.get(2) == Some(&true) {
                self.apply_control(&mut inst);
            }
            let n = self.read_batch(&mut inst, &ready);
            if n == 0 {
                continue;
            }
            inst.store.data_mut().count = n;
            let verdicts = match self.call(&mut inst, "inbound", n, EspInstance::decap) {
                Call::Done(v) => v,
                Call::Restarted => continue,
                Call::Stop => return,
            };
            let st = inst.store.data_mut();
            for (i, (p, v)) in st.batch[..n].iter_mut().zip(verdicts).enumerate() {
                match v {
                    DecapVerdict::Deliver(len) => {
                        if let Some(Some((spi, src))) = self.sources.get(i) {
                            follow_peer(&mut self.floats, self.to_outbound.as_ref(), *spi, *src);
                        }
                        p.truncate(len as usize);
                        match self.tun.send(p.data()) {
                            Ok(_) => stats::inc(&self.stats.tun_tx_packets),
                            Err(e) => {
                                debug!(error = %e, "TUN write failed");
                                stats::inc(&self.stats.tx_errors);
                            }
                        }
                    }
                    DecapVerdict::Drop(r) => {
                        debug!(reason = r.name(), "inbound drop");
                        self.stats.in_drop(r);
                    }
                }
            }
        }
    }

    /// Fill the batch with ESP packets from the ready sockets; keepalives
    /// and IKE are counted and set aside.
    fn read_batch(&mut self, inst: &mut EspInstance, ready: &[bool]) -> usize {
        let st = inst.store.data_mut();
        let mut n = 0;
        self.sources.clear();
        if ready[0] {
            while n < self.batch {
                let p = &mut st.batch[n];
                match self.udp.recv_from(p.recv_area()) {
                    Ok((len, _from)) => {
                        p.set_received(len);
                        match Datagram::classify(p.data()) {
                            Ok(Datagram::Esp(esp)) => {
                                stats::inc(&self.stats.esp_rx_packets);
                                stats::add(&self.stats.esp_rx_bytes, len as u64);
                                let spi = u32::from_be_bytes([esp[0], esp[1], esp[2], esp[3]]);
                                self.sources.push(match _from {
                                    std::net::SocketAddr::V4(f) => Some((spi, f)),
                                    _ => None,
                                });
                                n += 1;
                            }
                            Ok(Datagram::Keepalive) => stats::inc(&self.stats.keepalives_rx),
                            Ok(Datagram::Ike(ike)) => match (&self.up, _from) {
                                (Some(up), std::net::SocketAddr::V4(from)) => {
                                    let mut m = Vec::with_capacity(7 + ike.len());
                                    m.push(UP_IKE);
                                    m.extend_from_slice(&from.ip().octets());
                                    m.extend_from_slice(&from.port().to_be_bytes());
                                    m.extend_from_slice(ike);
                                    if up.send(&m).is_err() {
                                        stats::inc(&self.stats.ike_rx_unhandled);
                                    }
                                }
                                _ => stats::inc(&self.stats.ike_rx_unhandled),
                            },
                            Err(_) => stats::inc(&self.stats.rx_runts),
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!(error = %e, "UDP receive failed");
                        break;
                    }
                }
            }
        }
        if let (Some(raw), Some(true)) = (&self.raw, ready.get(1)) {
            while n < self.batch {
                let p = &mut st.batch[n];
                match raw.recv_from(p.recv_area()) {
                    Ok((len, _from)) => {
                        let ihl = p.recv_area().first().map_or(0, |b| usize::from(b & 0x0f) * 4);
                        p.set_received_skip(len, ihl);
                        if p.len() < wasmsec_wire::esp::HEADER_LEN {
                            stats::inc(&self.stats.rx_runts);
                            continue;
                        }
                        stats::inc(&self.stats.esp_rx_packets);
                        stats::add(&self.stats.esp_rx_bytes, p.len() as u64);
                        self.sources.push(None);
                        n += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!(error = %e, "raw ESP receive failed");
                        break;
                    }
                }
            }
        }
        n
    }
}

/// NAT-T port floating (RFC 3948, RFC 7296 section 2.23): authenticated ESP
/// from a new address or port means the peer's NAT mapping changed, so its
/// outbound SA follows. Only called for packets that passed the ICV check.
fn follow_peer(
    floats: &mut HashMap<u32, (u32, SocketAddrV4)>,
    to_outbound: Option<&DpLink>,
    spi: u32,
    src: SocketAddrV4,
) {
    let Some((outbound_spi, peer)) = floats.get_mut(&spi) else { return };
    if *peer == src {
        return;
    }
    *peer = src;
    if let Some(link) = to_outbound {
        link.send(DpControl::MovePeer {
            outbound_spi: *outbound_spi,
            peer: Peer { address: *src.ip(), port: src.port(), encapsulation: Encapsulation::Udp },
        });
    }
}
