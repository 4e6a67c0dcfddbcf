//! The data path: TUN -> ESP component -> socket ([`outbound`]), and back
//! ([`inbound`]).
//!
//! Each direction has its own thread and its own ESP instance (outbound
//! SAs in one, inbound SAs in the other), so the two never contend for a
//! store. A loop reads a batch of up to `runtime.batch` packets into the
//! instance's host buffers, makes one call into the component, and acts on
//! the verdicts. Payloads are never copied into the guest. SA changes come
//! from the control thread and reports go to it over typed channels
//! ([`channel`]).
pub mod channel;
pub mod guard;
pub mod inbound;
pub mod outbound;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};

use crate::config::Encapsulation;
use crate::keys::{KeyUse, Keystore};
use crate::packet::PacketBuf;
use crate::stats::{self, Stats};
use crate::sys::{self, RawEsp, Tun};
use crate::wasm::Runtime;
use crate::wasm::esp::{EspInstance, InboundSa, OutboundSa};
use channel::{Receiver, Report, SaCommand, Sender};
use guard::GuestGuard;

/// How often a loop asks its guest for SA expiries (not per batch: the
/// call would cost every batch, and a rekey does not need to start sooner).
const EXPIRY_POLL: Duration = Duration::from_millis(100);
const POLL_MS: i32 = 200;

/// Where ESP for one peer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's address.
    pub address: Ipv4Addr,
    /// Its UDP port when encapsulating (4500, or what a NAT made of it).
    pub port: u16,
    /// Raw ESP or ESP in UDP.
    pub encapsulation: Encapsulation,
}

/// Host-side record of the SAs an instance holds, to rebuild it after a
/// trap: keys stay in the keystore, sequence numbers come from the keys'
/// high-water marks.
pub struct SaSet {
    /// Where the keys live.
    pub keystore: Arc<Keystore>,
    /// Outbound SAs as installed.
    pub outbound: Vec<OutboundSa>,
    /// Inbound SAs as installed.
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
            inst.store.data_mut().keys.grant(sa.key, key, KeyUse::Seal { spi: sa.spi, peer: sa.peer });
            inst.install_outbound(&sa)?.map_err(|e| anyhow::anyhow!("outbound SA {:#x}: {e}", sa.spi))?;
        }
        for sa in &self.inbound {
            let key = self.keystore.get(sa.key).ok_or_else(|| anyhow::anyhow!("key for SPI {:#x} missing", sa.spi))?;
            let mut sa = sa.clone();
            sa.highest_seq = sa.highest_seq.max(key.highest_seq());
            inst.store.data_mut().keys.grant(sa.key, key, KeyUse::Open { spi: sa.spi });
            inst.install_inbound(&sa)?.map_err(|e| anyhow::anyhow!("inbound SA {:#x}: {e}", sa.spi))?;
        }
        Ok(inst)
    }
}

/// Everything one direction's loop needs.
pub struct Loop {
    /// The wasm engine, for a new ESP instance after a trap.
    pub runtime: Arc<Runtime>,
    /// The SAs to install again in that instance.
    pub sas: SaSet,
    /// This thread's queue of the TUN device.
    pub tun: Tun,
    /// Port 4500: ESP in UDP and IKE after NAT detection.
    pub udp: UdpSocket,
    /// Raw IP protocol 50 socket, for ESP without encapsulation.
    pub raw: Option<RawEsp>,
    /// Where each peer index the guest names sends to.
    pub peers: Vec<Peer>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Packets per guest call.
    pub batch: usize,
    /// SA changes from the control thread.
    pub inbox: Option<Receiver<SaCommand>>,
    /// To the control thread: IKE from port 4500 (inbound thread), acquires
    /// for traffic without an SA (outbound thread), SA expiries (both).
    pub up: Option<Sender<Report>>,
    /// Inbound thread: tells the outbound thread when a peer moved.
    pub to_outbound: Option<Sender<SaCommand>>,
    /// Inbound thread: inbound SPI -> (outbound SPI, where the peer is).
    pub floats: HashMap<u32, (u32, SocketAddrV4)>,
    /// Inbound thread: SPI and source of each packet of the batch.
    pub sources: Vec<Option<(u32, SocketAddrV4)>>,
    /// Protocol errors and replacements of this loop's guest.
    pub guard: GuestGuard,
}

fn ensure_buffers(inst: &mut EspInstance, n: usize) {
    let b = &mut inst.store.data_mut().batch;
    if b.len() < n {
        b.resize_with(n, PacketBuf::new);
    }
}

impl Loop {
    /// One batch call into the guest on the first `n` packets: its
    /// verdicts, or none when the batch is lost. A trap replaces the
    /// instance from the host's SA records (if that fails the daemon is
    /// told to stop); requests the host refused and a wrong number of
    /// verdicts are protocol errors.
    fn call<T>(
        &mut self,
        inst: &mut EspInstance,
        what: &str,
        n: usize,
        f: impl FnOnce(&mut EspInstance, usize) -> Result<Vec<T>>,
    ) -> Option<Vec<T>> {
        match f(inst, n) {
            Ok(v) => {
                let errors = inst.store.data().refusals + n.abs_diff(v.len()) as u64;
                (!self.protocol_errors(inst, what, errors)).then_some(v)
            }
            Err(err) => {
                warn!(direction = what, error = %err, "ESP guest trapped; replacing the instance");
                self.replace(inst, what);
                None
            }
        }
    }

    /// Count `errors` guest protocol errors; true if that many replaced the
    /// instance (the batch is then lost).
    fn protocol_errors(&mut self, inst: &mut EspInstance, what: &str, errors: u64) -> bool {
        if errors == 0 {
            return false;
        }
        stats::add(&self.stats.guest_protocol_errors, errors);
        if !self.guard.strike(errors, Instant::now()) {
            return false;
        }
        warn!(
            direction = what,
            limit = guard::STRIKE_LIMIT,
            "ESP guest keeps breaking the host's rules; replacing the instance"
        );
        self.replace(inst, what) || {
            sys::request_stop();
            true
        }
    }

    /// Replace the instance from the host's SA records, after the guard's
    /// backoff; false (and the daemon stops) if that fails.
    fn replace(&mut self, inst: &mut EspInstance, what: &str) -> bool {
        stats::inc(&self.stats.guest_restarts);
        let wait = self.guard.replacement_wait(Instant::now());
        if !wait.is_zero() {
            warn!(direction = what, wait_ms = wait.as_millis() as u64, "ESP guest replaced again soon: backing off");
            let until = Instant::now() + wait;
            while Instant::now() < until && !sys::stop_requested() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        match self.sas.instantiate(&self.runtime) {
            Ok(i) => {
                *inst = i;
                ensure_buffers(inst, self.batch);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot replace the ESP guest; stopping");
                sys::request_stop();
                false
            }
        }
    }

    /// Apply SA changes from the control thread.
    fn apply_commands(&mut self, inst: &mut EspInstance) {
        let Some(inbox) = &self.inbox else { return };
        for m in inbox.drain() {
            let r = match m {
                SaCommand::AddOutbound { mut sa, peer } => {
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
                SaCommand::AddInbound { sa, outbound_spi, peer } => {
                    if let (Some(o), Some(p)) = (outbound_spi, peer) {
                        self.floats.insert(sa.spi, (o, p));
                    }
                    info!(spi = format_args!("{:08x}", sa.spi), "data path: accepting on inbound SA");
                    self.install(inst, None, Some(sa))
                }
                SaCommand::MovePeer { outbound_spi, peer } => {
                    if let Some(sa) = self.sas.outbound.iter().find(|s| s.spi == outbound_spi)
                        && let Some(p) = self.peers.get_mut(sa.peer as usize)
                    {
                        info!(from = %p.address, to = %peer.address, port = peer.port, "peer moved (NAT mapping changed): following it");
                        *p = peer;
                    }
                    Ok(())
                }
                SaCommand::RemoveOutbound { spi } => {
                    info!(spi = format_args!("{spi:08x}"), "data path: outbound SA removed");
                    if let Some(pos) = self.sas.outbound.iter().position(|s| s.spi == spi) {
                        let sa = self.sas.outbound.remove(pos);
                        inst.store.data_mut().keys.revoke(sa.key);
                    }
                    inst.remove_outbound(spi).map(|_| ())
                }
                SaCommand::RemoveInbound { spi } => {
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
        let key_use = match (&out, &inb) {
            (Some(sa), _) => KeyUse::Seal { spi: sa.spi, peer: sa.peer },
            (None, Some(sa)) => KeyUse::Open { spi: sa.spi },
            (None, None) => return Ok(()),
        };
        inst.store.data_mut().keys.grant(handle, key, key_use);
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

    /// Pass the guest's SA expiries up to the control thread, at most every
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
            match &self.up {
                Some(up) => {
                    up.send(Report::Expired { spi: x.spi, hard: x.hard });
                }
                None => warn!(spi = format_args!("{:08x}", x.spi), "SA lifetime reached, but no IKE to rekey it"),
            }
        }
    }
}
