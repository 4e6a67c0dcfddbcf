//! Data-plane counters. Every dropped packet is counted under its reason;
//! nothing is dropped silently. `/metrics` exports them
//! (`ops::render`); `--stats-file` and `wasmsec stats` show a
//! JSON snapshot.
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wasm::esp::DropReason;

/// The data plane's counters, updated with relaxed atomics.
#[derive(Default)]
pub struct Stats {
    /// Inner packets read from the TUN device.
    pub tun_rx_packets: AtomicU64,
    /// Inner packets written to the TUN device.
    pub tun_tx_packets: AtomicU64,
    /// TCP super-packets read with TSO (each also counted as its segments
    /// in `tun_rx_packets`).
    pub tun_rx_super: AtomicU64,
    /// ESP packets held for an SA we asked for and had not installed yet
    /// (`datapath::hold`); each is later opened or counted as an unknown SPI.
    pub esp_rx_held: AtomicU64,
    /// ESP packets the host refused to open because their key had
    /// authenticated their sequence number already or it was left of the
    /// SA's window: a replay the ESP guest's window let through, a second
    /// copy within one batch, or a number a later packet of the batch
    /// pushed out of the window (the guest counts its drop too, an honest
    /// one as `replay`).
    pub esp_rx_replays_refused: AtomicU64,
    /// Of `esp_rx_replays_refused`, those the key's record refused before
    /// the call that asked to open them: replays the ESP guest's own
    /// window should have dropped, which an honest guest never asks for.
    pub esp_rx_replays_missed: AtomicU64,
    /// TCP super-packets written to the TUN device, each joined from
    /// segments opened one after the other (each also counted as its
    /// segments in `tun_tx_packets`).
    pub tun_tx_joined: AtomicU64,
    /// Packets from the TUN device whose offload header could not be
    /// followed (a GSO type not offered, offsets outside the packet).
    pub tun_rx_malformed: AtomicU64,
    /// ESP packets sent, in UDP or raw.
    pub esp_tx_packets: AtomicU64,
    /// Raw ESP datagrams sent through the packet socket (`[network]
    /// raw_esp_send = "link"`), and those that went through the IP socket
    /// instead (no usable next hop, a neighbour check, refused).
    pub esp_tx_link: AtomicU64,
    pub esp_tx_link_fallback: AtomicU64,
    /// Bytes of those ESP packets, without the UDP and IP headers.
    pub esp_tx_bytes: AtomicU64,
    /// ESP packets received (before checks).
    pub esp_rx_packets: AtomicU64,
    /// Bytes of those ESP packets, without the UDP and IP headers.
    pub esp_rx_bytes: AtomicU64,
    /// NAT keepalives received on 4500 (RFC 3948 section 2.3).
    pub keepalives_rx: AtomicU64,
    /// IKE messages received (non-ESP marker on 4500); no IKE engine yet.
    pub ike_rx_unhandled: AtomicU64,
    /// Datagrams too short to be anything (counted, dropped).
    pub rx_runts: AtomicU64,
    /// Opened packets dropped because the outer header was marked CE and
    /// the inner packet is not ECN-capable (RFC 6040 section 4.2).
    pub rx_ecn_drops: AtomicU64,
    /// Send or write failures (socket or TUN).
    pub tx_errors: AtomicU64,
    /// Guest instances replaced after a trap.
    pub guest_restarts: AtomicU64,
    /// SAs the data path could not install (the guest refused or trapped,
    /// or no instance could be made); each one's CHILD SA is deleted.
    pub sa_install_failures: AtomicU64,
    /// A guest broke the host's rules: a request the host refused (a key
    /// used for another SA or direction, keys installed that were never
    /// derived together), a verdict that does not match what the host did,
    /// or verdicts missing.
    pub guest_protocol_errors: AtomicU64,
    /// IKE datagrams above the IKE message limit, dropped before the guest.
    pub ike_oversize: AtomicU64,
    /// Datagrams on the IKE port sent to a broadcast or multicast address
    /// (listening on every address), dropped before the guest.
    pub ike_not_unicast: AtomicU64,
    /// The same on the NAT-T port, IKE or ESP, dropped by the data path.
    pub rx_not_unicast: AtomicU64,
    /// IKE datagrams from UDP 4500 dropped because `MAX_QUEUED_IKE`
    /// reports already waited for the IKE thread (a bound the hand-off
    /// channel keeps).
    pub ike_queue_full: AtomicU64,
    /// Packets of a guest group whose replacement waits for its backoff.
    pub guest_suspended_drops: AtomicU64,
    /// Entries of the outbound data path's peer table (address, port and
    /// encapsulation the sealed packets go to): the peers the outbound SAs
    /// and manual tunnels name, set when an outbound SA comes or goes.
    pub peers: AtomicU64,
    /// Outbound packets dropped, by `DropReason::index`.
    out_drops: [AtomicU64; DropReason::COUNT],
    /// Inbound packets dropped, by `DropReason::index`.
    in_drops: [AtomicU64; DropReason::COUNT],
    /// The `[[manual]]` tunnels' traffic, by name (IKE's CHILD SAs are
    /// counted by the IKE thread's view instead), set before start.
    pub manual: Vec<ManualTraffic>,
    /// The daemon's sockets (copies of their descriptors, set before
    /// start), to read what the kernel dropped at each: datagrams that
    /// never reached us are counted too ([`Stats::socket_drops`]).
    pub sockets: Vec<(&'static str, std::os::fd::OwnedFd)>,
}

/// A manual tunnel's traffic: its name and its two SAs' counters.
#[derive(Debug, Default)]
pub struct ManualTraffic {
    pub name: String,
    pub sas: SaPairTraffic,
}

/// The traffic of an SA pair: the inbound SA's counters, then the outbound one's.
pub type SaPairTraffic = [std::sync::Arc<SaTraffic>; 2];

/// Packets and bytes in and out: [in packets, in bytes, out packets, out bytes].
pub type Traffic = [u64; 4];

/// The names of [`Traffic`]'s fields in the JSON views, in its order.
pub const TRAFFIC_FIELDS: [&str; 4] = ["in_packets", "in_bytes", "out_packets", "out_bytes"];

/// An SA pair's counters now.
pub fn traffic(sas: &SaPairTraffic) -> Traffic {
    let [(ip, ib), (op, ob)] = sas.each_ref().map(|t| t.get());
    [ip, ib, op, ob]
}

/// [`Traffic`] as a JSON object with [`TRAFFIC_FIELDS`].
pub fn traffic_json(t: Traffic) -> serde_json::Value {
    TRAFFIC_FIELDS.iter().zip(t).map(|(k, n)| (k.to_string(), serde_json::Value::from(n))).collect()
}

/// One SA's traffic: packets and bytes (the ESP packet, header to ICV)
/// that it sealed and that left, or that it opened and that went to the
/// TUN. Shared by the data-path thread that counts and the IKE thread
/// that shows it (per SA in `list-sas`, per connection in `/metrics`).
#[derive(Debug, Default)]
pub struct SaTraffic {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

impl SaTraffic {
    /// Count one packet, after the daemon-wide counters: the release
    /// pairs with the acquire in [`SaTraffic::get`], so whoever sees this
    /// packet here also sees it in the totals ([`Stats::snapshot`]).
    pub fn count(&self, bytes: usize) {
        add(&self.bytes, bytes as u64);
        self.packets.fetch_add(1, Ordering::Release);
    }

    /// (packets, bytes)
    pub fn get(&self) -> (u64, u64) {
        let packets = self.packets.load(Ordering::Acquire);
        (packets, self.bytes.load(Ordering::Relaxed))
    }
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    /// Watch socket `sock` as `name` (`ike`: UDP 500; `nat_t`: UDP 4500,
    /// ESP in UDP and IKE; `esp`: raw IP protocol 50).
    pub fn watch_socket(&mut self, name: &'static str, sock: &impl std::os::fd::AsFd) -> std::io::Result<()> {
        self.sockets.push((name, sock.as_fd().try_clone_to_owned()?));
        Ok(())
    }

    /// Datagrams the kernel dropped at each watched socket (its receive
    /// buffer was full), by name; a kernel that does not say gives none.
    pub fn socket_drops(&self) -> Vec<(&'static str, u64)> {
        self.sockets.iter().filter_map(|(n, fd)| Some((*n, crate::sys::socket_drops(fd)?))).collect()
    }

    pub fn out_drop(&self, r: DropReason) {
        inc(&self.out_drops[r.index()]);
    }

    pub fn in_drop(&self, r: DropReason) {
        inc(&self.in_drops[r.index()]);
    }

    pub fn out_drops(&self, r: DropReason) -> u64 {
        self.out_drops[r.index()].load(Ordering::Relaxed)
    }

    pub fn in_drops(&self, r: DropReason) -> u64 {
        self.in_drops[r.index()].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> serde_json::Value {
        // Per-SA counters first: the data path counts a packet in the
        // daemon-wide counters before its SA's, so reading them in the
        // other order keeps a tunnel's count at or below the total even
        // while packets flow (a tunnel above the total would read as lost
        // accounting to anyone checking one against the other).
        let manual = serde_json::Value::Object(
            self.manual.iter().map(|m| (m.name.clone(), traffic_json(traffic(&m.sas)))).collect(),
        );
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let drops = |a: &[AtomicU64; DropReason::COUNT]| {
            serde_json::Value::Object(
                DropReason::ALL.iter().map(|r| (r.name().to_string(), g(&a[r.index()]).into())).collect(),
            )
        };
        serde_json::json!({
            "tun_rx_packets": g(&self.tun_rx_packets),
            "tun_tx_packets": g(&self.tun_tx_packets),
            "tun_rx_super": g(&self.tun_rx_super),
            "esp_rx_held": g(&self.esp_rx_held),
            "esp_rx_replays_refused": g(&self.esp_rx_replays_refused),
            "esp_rx_replays_missed": g(&self.esp_rx_replays_missed),
            "tun_tx_joined": g(&self.tun_tx_joined),
            "tun_rx_malformed": g(&self.tun_rx_malformed),
            "esp_tx_packets": g(&self.esp_tx_packets),
            "esp_tx_link": g(&self.esp_tx_link),
            "esp_tx_link_fallback": g(&self.esp_tx_link_fallback),
            "esp_tx_bytes": g(&self.esp_tx_bytes),
            "esp_rx_packets": g(&self.esp_rx_packets),
            "esp_rx_bytes": g(&self.esp_rx_bytes),
            "keepalives_rx": g(&self.keepalives_rx),
            "ike_rx_unhandled": g(&self.ike_rx_unhandled),
            "rx_runts": g(&self.rx_runts),
            "rx_ecn_drops": g(&self.rx_ecn_drops),
            "tx_errors": g(&self.tx_errors),
            "guest_restarts": g(&self.guest_restarts),
            "sa_install_failures": g(&self.sa_install_failures),
            "guest_protocol_errors": g(&self.guest_protocol_errors),
            "ike_oversize": g(&self.ike_oversize),
            "ike_not_unicast": g(&self.ike_not_unicast),
            "rx_not_unicast": g(&self.rx_not_unicast),
            "ike_queue_full": g(&self.ike_queue_full),
            "guest_suspended_drops": g(&self.guest_suspended_drops),
            "peers": g(&self.peers),
            "outbound_drops": drops(&self.out_drops),
            "inbound_drops": drops(&self.in_drops),
            "socket_drops": serde_json::Value::Object(
                self.socket_drops().into_iter().map(|(n, v)| (n.to_string(), v.into())).collect()
            ),
            "manual": manual,
        })
    }

    /// Write the snapshot to `path` atomically (write, then rename).
    pub fn write_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.snapshot())?)?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// While one thread counts packets the way the data path does (the
    /// totals, then the SA), every snapshot another thread takes shows the
    /// tunnel at or below the totals.
    #[test]
    fn a_snapshot_never_shows_a_tunnel_above_the_totals() {
        let manual = ManualTraffic { name: "t".into(), ..Default::default() };
        let out = manual.sas[1].clone();
        let stats = Arc::new(Stats { manual: vec![manual], ..Default::default() });
        let counting = {
            let stats = stats.clone();
            std::thread::spawn(move || {
                for _ in 0..200_000 {
                    inc(&stats.esp_tx_packets);
                    out.count(100);
                }
            })
        };
        let mut seen = 0;
        while !counting.is_finished() || seen == 0 {
            let s = stats.snapshot();
            let tunnel = s["manual"]["t"]["out_packets"].as_u64().unwrap();
            let total = s["esp_tx_packets"].as_u64().unwrap();
            assert!(tunnel <= total, "tunnel {tunnel} > total {total}");
            seen += 1;
        }
        counting.join().unwrap();
    }
}
