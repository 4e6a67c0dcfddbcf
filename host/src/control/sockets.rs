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

    /// Our end of the NAT-T port, for IKE the data path set aside.
    pub fn nat_t_endpoint(&self) -> io::Result<Endpoint> {
        Ok(endpoint(self.address, self.nat_t_port))
    }

    /// Every datagram waiting on the IKE port (IPv4 senders only).
    pub fn receive(&mut self) -> io::Result<Vec<Datagram>> {
        let local = endpoint(self.address, self.ike_port);
        let buf = &mut self.buf;
        let mut out = Vec::new();
        loop {
            match self.ike.recv_from(buf) {
                Ok((n, SocketAddr::V4(from))) => out.push(Datagram {
                    local: local.clone(),
                    remote: endpoint(*from.ip(), from.port()),
                    data: buf[..n].to_vec(),
                }),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return if out.is_empty() { Err(e) } else { Ok(out) },
            }
        }
    }

    /// Send an IKE datagram from the port the engine chose: on the NAT-T
    /// port behind the non-ESP marker.
    pub fn send(&self, d: &Datagram) -> io::Result<SocketAddrV4> {
        let Some(SocketAddr::V4(to)) = socket_addr(&d.remote) else {
            return Err(io::Error::new(ErrorKind::InvalidInput, "not an IPv4 endpoint"));
        };
        if d.local.port == self.nat_t_port {
            let mut m = Vec::with_capacity(NON_ESP_MARKER.len() + d.data.len());
            m.extend_from_slice(&NON_ESP_MARKER);
            m.extend_from_slice(&d.data);
            self.nat_t.send_to(&m, to)?;
        } else {
            self.ike.send_to(&d.data, to)?;
        }
        Ok(to)
    }

    /// A NAT keepalive (one 0xFF byte, no marker, RFC 3948 section 2.3).
    pub fn keepalive(&self, remote: &Endpoint) -> io::Result<()> {
        match socket_addr(remote) {
            Some(SocketAddr::V4(to)) => self.nat_t.send_to(&KEEPALIVE, to).map(|_| ()),
            _ => Err(io::Error::new(ErrorKind::InvalidInput, "not an IPv4 endpoint")),
        }
    }
}
