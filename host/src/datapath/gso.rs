//! Sending a batch's ESP-in-UDP packets with UDP GSO (outbound thread):
//! consecutive packets to the same peer with the same size (the last may
//! be shorter), as the segments of a TSO super-packet come out sealed, go
//! in one `sendmsg` with `UDP_SEGMENT` instead of one `sendto` each. The
//! kernel's per-datagram cost (route lookup, skb, the veth or NIC queue)
//! is most of the sending gateway's time without it.
//!
//! Where the kernel refuses (`EIO`: a device that cannot checksum for it;
//! `EINVAL`: a kernel without it) the batch goes out one by one and GSO
//! stays off for the life of the thread (logged once).
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::stats::{self, SaTraffic, Stats};
use crate::sys;

/// At most this many datagrams per send (the kernel's `UDP_MAX_SEGMENTS`
/// is 64 on older kernels) ...
const MAX_SEGMENTS: usize = 64;
/// ... and this many bytes (an IP packet's length field, less headers).
const MAX_BYTES: usize = 65_000;

/// What a send needs from the loop.
pub struct UdpOut<'a> {
    pub udp: &'a UdpSocket,
    pub stats: &'a Stats,
    pub traffic: &'a HashMap<u32, Arc<SaTraffic>>,
}

/// Datagrams waiting to go out together.
pub struct GsoSend {
    /// Still allowed (no refusal seen).
    pub enabled: bool,
    buf: Vec<u8>,
    to: Option<SocketAddrV4>,
    /// Our address they leave from (`Peer::source`).
    from: Ipv4Addr,
    /// Their outer TOS byte (`tos.rs`): one per send.
    tos: u8,
    /// Size of every datagram but possibly the last.
    segment: usize,
    /// Each datagram's SPI (for its SA's counters) and length.
    parts: Vec<(Option<u32>, usize)>,
}

impl Default for GsoSend {
    fn default() -> Self {
        GsoSend::new(true)
    }
}

impl GsoSend {
    /// With GSO allowed (`enabled`) or never tried.
    pub fn new(enabled: bool) -> GsoSend {
        let (to, from) = (None, Ipv4Addr::UNSPECIFIED);
        GsoSend { enabled, buf: Vec::with_capacity(MAX_BYTES), to, from, tos: 0, segment: 0, parts: Vec::new() }
    }

    /// Queue one sealed datagram for `to` from `from` with outer TOS
    /// `tos`, sending what was queued first when it cannot join them.
    pub fn push(&mut self, out: &UdpOut, to: SocketAddrV4, from: Ipv4Addr, tos: u8, spi: Option<u32>, data: &[u8]) {
        let fits = self.to == Some(to)
            && self.from == from
            && self.tos == tos
            && data.len() <= self.segment
            && self.parts.last().is_some_and(|&(_, l)| l == self.segment)
            && self.parts.len() < MAX_SEGMENTS
            && self.buf.len() + data.len() <= MAX_BYTES;
        if !fits {
            self.flush(out);
            self.to = Some(to);
            self.from = from;
            self.tos = tos;
            self.segment = data.len();
        }
        self.buf.extend_from_slice(data);
        self.parts.push((spi, data.len()));
    }

    /// Send what is queued.
    pub fn flush(&mut self, out: &UdpOut) {
        let Some(to) = self.to.take() else {
            return;
        };
        let r = if self.parts.len() == 1 || !self.enabled {
            Err(None)
        } else {
            sys::send_udp(out.udp, to, self.from, &self.buf, Some(self.segment as u16), self.tos).map_err(Some)
        };
        match r {
            Ok(_) => {
                for &(spi, len) in &self.parts {
                    sent(out, spi, len);
                }
            }
            Err(e) => {
                if let Some(e) = e {
                    if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) {
                        warn!(error = %e, "UDP GSO refused; sending ESP datagrams one by one");
                        self.enabled = false;
                    } else {
                        debug!(error = %e, "UDP GSO send failed; one by one");
                    }
                }
                let mut at = 0;
                for &(spi, len) in &self.parts {
                    match sys::send_udp(out.udp, to, self.from, &self.buf[at..at + len], None, self.tos) {
                        Ok(_) => sent(out, spi, len),
                        Err(e) => {
                            debug!(error = %e, "ESP send failed");
                            stats::inc(&out.stats.tx_errors);
                        }
                    }
                    at += len;
                }
            }
        }
        self.buf.clear();
        self.parts.clear();
    }
}

/// Count a datagram that left (ESP in UDP or raw ESP).
pub(super) fn sent(out: &UdpOut, spi: Option<u32>, len: usize) {
    stats::inc(&out.stats.esp_tx_packets);
    stats::add(&out.stats.esp_tx_bytes, len as u64);
    if let Some(t) = spi.and_then(|s| out.traffic.get(&s)) {
        t.count(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket, SocketAddrV4) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        (UdpSocket::bind("127.0.0.1:0").unwrap(), rx, to)
    }

    #[test]
    fn runs_of_equal_datagrams_leave_together_and_arrive_apart() {
        let (tx, rx, to) = pair();
        let stats = Stats::default();
        let traffic = HashMap::new();
        let out = UdpOut { udp: &tx, stats: &stats, traffic: &traffic };
        let mut g = GsoSend::default();
        // Three of 100 bytes and a short one (one GSO send), then a longer
        // one that cannot join (a send of its own).
        let sizes = [100usize, 100, 100, 40, 120];
        for (i, &n) in sizes.iter().enumerate() {
            g.push(&out, to, Ipv4Addr::UNSPECIFIED, 0, None, &vec![i as u8; n]);
        }
        g.flush(&out);
        for (i, &n) in sizes.iter().enumerate() {
            let mut b = [0u8; 2000];
            let got = rx.recv(&mut b).unwrap();
            assert_eq!(&b[..got], &vec![i as u8; n][..], "datagram {i}");
        }
        assert_eq!(stats.esp_tx_packets.load(std::sync::atomic::Ordering::Relaxed), 5);
        assert!(g.enabled, "loopback takes UDP GSO");
    }

    #[test]
    fn a_gro_read_brings_a_run_at_once() {
        let (tx, rx, to) = pair();
        sys::enable_udp_gro(&rx).unwrap();
        let stats = Stats::default();
        let traffic = HashMap::new();
        let out = UdpOut { udp: &tx, stats: &stats, traffic: &traffic };
        let mut g = GsoSend::default();
        for i in 0..4u8 {
            g.push(&out, to, Ipv4Addr::UNSPECIFIED, 0, None, &[i; 300]);
        }
        g.flush(&out);
        let mut b = vec![0u8; 65_535];
        let r = sys::recv_gro(&rx, &mut b).unwrap();
        assert_eq!((r.len, r.segment), (1200, Some(300)));
        assert_eq!(r.from.map(|a| a.port()), tx.local_addr().ok().map(|a| a.port()));
        assert!(b[..1200].chunks(300).enumerate().all(|(i, c)| c.iter().all(|&x| x == i as u8)));
    }

    /// From a socket on every address, a run (one GSO send) and a lone
    /// datagram leave from the address their SAs name, 127.0.0.2 here,
    /// not the loopback route's preferred source (127.0.0.1).
    #[test]
    fn datagrams_leave_from_the_address_their_sas_name() {
        let (_, rx, to) = pair();
        let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
        let stats = Stats::default();
        let traffic = HashMap::new();
        let out = UdpOut { udp: &tx, stats: &stats, traffic: &traffic };
        let mut g = GsoSend::default();
        let ours = Ipv4Addr::new(127, 0, 0, 2);
        for n in [200usize, 200, 50] {
            g.push(&out, to, ours, 0, None, &vec![1; n]);
        }
        g.flush(&out);
        for n in [200usize, 200, 50] {
            let mut b = [0u8; 2000];
            let (got, from) = rx.recv_from(&mut b).unwrap();
            assert_eq!((got, from.ip()), (n, std::net::IpAddr::V4(ours)));
        }
        assert_eq!(stats.esp_tx_packets.load(std::sync::atomic::Ordering::Relaxed), 3);
    }
}
