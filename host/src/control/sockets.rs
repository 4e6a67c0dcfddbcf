//! The IKE thread's UDP sockets and their framing: port 500 as is, port
//! 4500 behind the non-ESP marker (RFC 3948 section 2.2), NAT keepalives.
//! The inbound data-path thread reads port 4500; this side only sends on it.
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use wasmsec_wire::udp_encap::{KEEPALIVE, NON_ESP_MARKER};

use super::children::socket_addr;
use crate::wasm::ike::{Datagram, Endpoint};

/// Larger IKE datagrams are dropped before they reach the guest: the IKE
/// engine's own limit (strongSwan's `max_packet` default); nothing we
/// negotiate needs more until IKE fragmentation (RFC 7383) arrives.
pub const MAX_IKE_MESSAGE: usize = 10_000;

/// Datagrams read from the IKE port per round of the IKE thread: each
/// goes through the guest before the round's timers, UDP 4500's messages
/// and admin requests, so a flood on port 500 must not make one round
/// without end. The rest wait in the socket (whose buffer drops what it
/// cannot hold), as UDP 4500's wait behind `MAX_QUEUED_IKE`.
pub const MAX_READ_500: usize = 256;

/// What one read of the IKE port found.
#[derive(Debug, Default)]
pub struct Received {
    pub datagrams: Vec<Datagram>,
    /// Datagrams above [`MAX_IKE_MESSAGE`], dropped before a copy.
    pub oversize: u64,
    /// Datagrams to a broadcast or multicast address (listening on every
    /// address), dropped before a copy: no peer sends IKE there, and an
    /// answer could not leave from it.
    pub not_unicast: u64,
}

/// Our IKE address and the sockets on it.
pub struct IkeSockets {
    /// Our address on the wire.
    pub address: Ipv4Addr,
    /// UDP 500 (or the configured IKE port), non-blocking.
    pub ike: UdpSocket,
    /// A send handle on UDP 4500 (or the configured NAT-T port).
    pub nat_t: UdpSocket,
    /// The ports of the two, read once (not a `getsockname` per datagram).
    ike_port: u16,
    nat_t_port: u16,
    /// Where datagrams are read into, kept (not 64 KiB zeroed per read).
    buf: Vec<u8>,
}

/// An endpoint of the engine's from an IPv4 address and port.
pub fn endpoint(a: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint { address: a.octets().to_vec(), port }
}

impl IkeSockets {
    pub fn new(address: Ipv4Addr, ike: UdpSocket, nat_t: UdpSocket) -> io::Result<IkeSockets> {
        let (ike_port, nat_t_port) = (ike.local_addr()?.port(), nat_t.local_addr()?.port());
        Ok(IkeSockets { address, ike, nat_t, ike_port, nat_t_port, buf: vec![0; 65_536] })
    }

    /// Our end of the NAT-T port, for IKE the data path set aside: the
    /// address it was sent to where the socket listens on every one.
    pub fn nat_t_endpoint(&self, to: Option<Ipv4Addr>) -> Endpoint {
        endpoint(self.ours(to), self.nat_t_port)
    }

    /// Our address for a datagram the peer sent to `to`: the one we listen
    /// on, or, listening on every address, the one it named (NAT detection
    /// hashes it, RFC 7296 section 2.23; 0.0.0.0 there made both ends see
    /// a NAT that is not there).
    fn ours(&self, to: Option<Ipv4Addr>) -> Ipv4Addr {
        match to {
            Some(a) if self.address.is_unspecified() => a,
            _ => self.address,
        }
    }

    /// The datagrams waiting on the IKE port (IPv4 senders only), at most
    /// `max` of them, counting those too large without copying them.
    pub fn receive(&mut self, max: usize) -> io::Result<Received> {
        let mut out = Received::default();
        for _ in 0..max {
            match crate::sys::recv_gro(&self.ike, &mut self.buf) {
                Ok(r) if r.not_unicast => out.not_unicast += 1,
                Ok(r) if r.len > MAX_IKE_MESSAGE || r.truncated => out.oversize += 1,
                Ok(r) => {
                    let Some(from) = r.from else { continue };
                    out.datagrams.push(Datagram {
                        local: endpoint(self.ours(r.to), self.ike_port),
                        remote: endpoint(*from.ip(), from.port()),
                        data: self.buf[..r.len].to_vec(),
                    })
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if out.datagrams.is_empty() && out.oversize == 0 && out.not_unicast == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Send an IKE datagram from the port the engine chose: on the NAT-T
    /// port behind the non-ESP marker.
    pub fn send(&self, d: &Datagram) -> io::Result<SocketAddrV4> {
        let Some(SocketAddr::V4(to)) = socket_addr(&d.remote) else {
            return Err(io::Error::new(ErrorKind::InvalidInput, "not an IPv4 endpoint"));
        };
        let from = self.source(&d.local);
        let send = |sock: &UdpSocket, data: &[u8]| crate::sys::send_udp(sock, to, from, data, None, 0);
        if d.local.port == self.nat_t_port {
            let mut m = Vec::with_capacity(NON_ESP_MARKER.len() + d.data.len());
            m.extend_from_slice(&NON_ESP_MARKER);
            m.extend_from_slice(&d.data);
            send(&self.nat_t, &m)?;
        } else {
            send(&self.ike, &d.data)?;
        }
        Ok(to)
    }

    /// A NAT keepalive (one 0xFF byte, no marker, RFC 3948 section 2.3),
    /// from the IKE SA's address: the NAT mapping it keeps is that one's.
    pub fn keepalive(&self, local: &Endpoint, remote: &Endpoint) -> io::Result<()> {
        match socket_addr(remote) {
            Some(SocketAddr::V4(to)) => {
                crate::sys::send_udp(&self.nat_t, to, self.source(local), &KEEPALIVE, None, 0).map(|_| ())
            }
            _ => Err(io::Error::new(ErrorKind::InvalidInput, "not an IPv4 endpoint")),
        }
    }

    fn source(&self, local: &Endpoint) -> Ipv4Addr {
        source(local, self.address.is_unspecified())
    }
}

/// Where a datagram from `local` (as the engine names our end: an IKE
/// message, a keepalive, a CHILD SA's ESP) leaves from: listening on every
/// address (`any_address`), that one (where the peer's request arrived),
/// not the route's preferred source; else the socket's own (unspecified:
/// nothing asked of the kernel).
pub fn source(local: &Endpoint, any_address: bool) -> Ipv4Addr {
    match socket_addr(local) {
        Some(SocketAddr::V4(l)) if any_address => *l.ip(),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_of_the_ike_port_takes_at_most_its_share_and_skips_oversize_without_a_copy() {
        let ike = UdpSocket::bind("127.0.0.1:0").expect("IKE port");
        ike.set_nonblocking(true).expect("nonblocking");
        crate::sys::set_socket_buffers(&ike, 8 << 20).expect("socket buffers");
        let to = ike.local_addr().expect("address");
        let mut s =
            IkeSockets::new(Ipv4Addr::LOCALHOST, ike, UdpSocket::bind("127.0.0.1:0").expect("NAT-T")).expect("sockets");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.send_to(&[0u8; MAX_IKE_MESSAGE + 1], to).expect("oversize sent");
        for i in 0..300u16 {
            peer.send_to(&i.to_be_bytes(), to).expect("sent");
        }
        let r = s.receive(MAX_READ_500).expect("read");
        assert_eq!(
            (r.oversize, r.datagrams.len()),
            (1, MAX_READ_500 - 1),
            "one round's share, the oversize one counted"
        );
        assert_eq!(r.datagrams[0].data, 0u16.to_be_bytes(), "in order");
        let r = s.receive(MAX_READ_500).expect("read");
        assert_eq!((r.oversize, r.datagrams.len()), (0, 300 - (MAX_READ_500 - 1)), "the rest in the next round");
        assert_eq!(s.receive(MAX_READ_500).expect("read").datagrams.len(), 0);
    }

    /// Bound to every address, the sockets learn which one a peer sent to
    /// and answer from it; here 127.0.0.2, which is not the loopback
    /// route's preferred source (127.0.0.1). Before, the engine was told
    /// 0.0.0.0 and the answer came from 127.0.0.1.
    #[test]
    fn on_every_address_a_datagram_names_the_one_it_came_to_and_the_answer_leaves_from_it() {
        let ike = UdpSocket::bind("0.0.0.0:0").expect("IKE port");
        ike.set_nonblocking(true).expect("nonblocking");
        crate::sys::enable_recv_dst(&ike).expect("IP_PKTINFO");
        let port = ike.local_addr().expect("address").port();
        let nat_t = UdpSocket::bind("0.0.0.0:0").expect("NAT-T");
        let nat_t_port = nat_t.local_addr().expect("address").port();
        let mut s = IkeSockets::new(Ipv4Addr::UNSPECIFIED, ike, nat_t).expect("sockets");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        peer.send_to(b"request", ("127.0.0.2", port)).expect("sent");
        let mut got = Vec::new();
        for _ in 0..500 {
            got = s.receive(MAX_READ_500).expect("read").datagrams;
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got.len(), 1);
        let d = &got[0];
        assert_eq!((d.local.address.as_slice(), d.local.port), (&[127, 0, 0, 2][..], port));
        let answer = Datagram { local: d.local.clone(), remote: d.remote.clone(), data: b"answer".to_vec() };
        s.send(&answer).expect("answered");
        let mut buf = [0u8; 64];
        let (n, from) = peer.recv_from(&mut buf).expect("the answer");
        assert_eq!((&buf[..n], from), (&b"answer"[..], SocketAddr::from(([127, 0, 0, 2], port))));
        // A NAT keepalive of that IKE SA leaves from its address too.
        s.keepalive(&endpoint(Ipv4Addr::new(127, 0, 0, 2), nat_t_port), &d.remote).expect("keepalive");
        let (n, from) = peer.recv_from(&mut buf).expect("the keepalive");
        assert_eq!((&buf[..n], from), (&KEEPALIVE[..], SocketAddr::from(([127, 0, 0, 2], nat_t_port))));
    }
}
