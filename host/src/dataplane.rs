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
use std::sync::Arc;

use anyhow::Result;
use tracing::{debug, warn};
use wasmsec_wire::udp_encap::Datagram;

use crate::config::Encapsulation;
use crate::keystore::Keystore;
use crate::packet::PacketBuf;
use crate::runtime::{DecapVerdict, EncapVerdict, EspInstance, InboundSa, OutboundSa, Runtime};
use crate::stats::{self, Stats};
use crate::sys::{self, RawEsp, Tun};

/// Where ESP for one peer goes.
#[derive(Debug, Clone, Copy)]
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
            let key = self
                .keystore
                .get(sa.key)
                .ok_or_else(|| anyhow::anyhow!("key for SPI {:#x} missing", sa.spi))?;
            let mut sa = sa.clone();
            sa.next_seq = sa.next_seq.max(key.highest_seq() + 1);
            inst.store.data_mut().keys.grant(sa.key, key);
            inst.install_outbound(&sa)?
                .map_err(|e| anyhow::anyhow!("outbound SA {:#x}: {e}", sa.spi))?;
        }
        for sa in &self.inbound {
            let key = self
                .keystore
                .get(sa.key)
                .ok_or_else(|| anyhow::anyhow!("key for SPI {:#x} missing", sa.spi))?;
            let mut sa = sa.clone();
            sa.highest_seq = sa.highest_seq.max(key.highest_seq());
            inst.store.data_mut().keys.grant(sa.key, key);
            inst.install_inbound(&sa)?
                .map_err(|e| anyhow::anyhow!("inbound SA {:#x}: {e}", sa.spi))?;
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
}

const POLL_MS: i32 = 200;

fn ensure_buffers(inst: &mut EspInstance, n: usize) {
    let b = &mut inst.store.data_mut().batch;
    if b.len() < n {
        b.resize_with(n, PacketBuf::new);
    }
}

/// Replace a trapped instance; if even that fails, stop the daemon.
fn restart(l: &Loop, what: &str, err: anyhow::Error) -> Option<EspInstance> {
    warn!(direction = what, error = %err, "ESP guest trapped; restarting the instance");
    stats::inc(&l.stats.guest_restarts);
    match l.sas.instantiate(&l.runtime) {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::error!(error = %e, "cannot restart the ESP guest; stopping");
            sys::request_stop();
            None
        }
    }
}

impl Loop {
    /// TUN -> encap -> UDP/raw ESP.
    pub fn run_outbound(self, mut inst: EspInstance) {
        ensure_buffers(&mut inst, self.batch);
        while !sys::stop_requested() {
            match sys::poll_readable(&[self.tun.as_raw_fd()], POLL_MS) {
                Ok(r) if r[0] => {}
                Ok(_) => continue,
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
            let verdicts = match inst.encap() {
                Ok(v) => v,
                Err(e) => {
                    match restart(&self, "outbound", e) {
                        Some(i) => inst = i,
                        None => return,
                    }
                    ensure_buffers(&mut inst, self.batch);
                    continue;
                }
            };
            if verdicts.len() != n {
                stats::add(
                    &self.stats.guest_protocol_errors,
                    n.abs_diff(verdicts.len()) as u64,
                );
            }
            let st = inst.store.data();
            for (p, v) in st.batch[..n].iter().zip(verdicts) {
                match v {
                    EncapVerdict::Send(peer) => self.send(peer, p.data()),
                    EncapVerdict::Drop(r) => {
                        debug!(reason = r.name(), "outbound drop");
                        self.stats.out_drop(r);
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
    pub fn run_inbound(self, mut inst: EspInstance) {
        ensure_buffers(&mut inst, self.batch);
        let mut fds = vec![self.udp.as_raw_fd()];
        if let Some(r) = &self.raw {
            fds.push(r.as_raw_fd());
        }
        while !sys::stop_requested() {
            let ready = match sys::poll_readable(&fds, POLL_MS) {
                Ok(r) if r.iter().any(|x| *x) => r,
                Ok(_) => continue,
                Err(e) => {
                    warn!(error = %e, "poll on sockets failed");
                    continue;
                }
            };
            let n = self.read_batch(&mut inst, &ready);
            if n == 0 {
                continue;
            }
            inst.store.data_mut().count = n;
            let verdicts = match inst.decap() {
                Ok(v) => v,
                Err(e) => {
                    match restart(&self, "inbound", e) {
                        Some(i) => inst = i,
                        None => return,
                    }
                    ensure_buffers(&mut inst, self.batch);
                    continue;
                }
            };
            if verdicts.len() != n {
                stats::add(
                    &self.stats.guest_protocol_errors,
                    n.abs_diff(verdicts.len()) as u64,
                );
            }
            let st = inst.store.data_mut();
            for (p, v) in st.batch[..n].iter_mut().zip(verdicts) {
                match v {
                    DecapVerdict::Deliver(len) => {
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
    fn read_batch(&self, inst: &mut EspInstance, ready: &[bool]) -> usize {
        let st = inst.store.data_mut();
        let mut n = 0;
        if ready[0] {
            while n < self.batch {
                let p = &mut st.batch[n];
                match self.udp.recv_from(p.recv_area()) {
                    Ok((len, _from)) => {
                        p.set_received(len);
                        match Datagram::classify(p.data()) {
                            Ok(Datagram::Esp(_)) => {
                                stats::inc(&self.stats.esp_rx_packets);
                                stats::add(&self.stats.esp_rx_bytes, len as u64);
                                n += 1;
                            }
                            Ok(Datagram::Keepalive) => stats::inc(&self.stats.keepalives_rx),
                            Ok(Datagram::Ike(_)) => stats::inc(&self.stats.ike_rx_unhandled),
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
                        let ihl = p
                            .recv_area()
                            .first()
                            .map_or(0, |b| usize::from(b & 0x0f) * 4);
                        p.set_received_skip(len, ihl);
                        if p.len() < wasmsec_wire::esp::HEADER_LEN {
                            stats::inc(&self.stats.rx_runts);
                            continue;
                        }
                        stats::inc(&self.stats.esp_rx_packets);
                        stats::add(&self.stats.esp_rx_bytes, p.len() as u64);
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
