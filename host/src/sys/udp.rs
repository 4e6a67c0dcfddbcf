//! UDP sockets' system calls: sends and reads with their control messages
//! (GSO segments, GRO reads, the outer TOS byte, and with `IP_PKTINFO` the
//! address of ours a datagram leaves from or arrived at), buffer sizes and
//! drop counts. The raw ESP socket's batches use the same control messages.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use super::sockaddr;

/// `setsockopt` level and option of UDP generic segmentation offload.
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;

/// Tests only: `WASMSEC_TEST_UDP_GSO_EIO=1` makes every UDP GSO send fail
/// as on a device without checksum offload. Read once, not per send.
static TEST_UDP_GSO_EIO: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("WASMSEC_TEST_UDP_GSO_EIO").is_some_and(|v| v == "1"));

/// Send `buf` to `to` from our address `from` (unspecified: the socket's;
/// `source`), with `tos` as the outer header's DSCP and ECN byte
/// (`IP_TOS`, 0: the socket's, which is 0). With `segment`, as datagrams
/// of that many bytes each (the last may be shorter) in one system call:
/// UDP GSO (`UDP_SEGMENT`, Linux 4.18). The kernel cuts it as
/// late as it can, on a veth or a GSO-capable NIC not at all. It fails with
/// `EIO` where the device cannot checksum for it, and with `EINVAL` on a
/// kernel without it; callers then send one by one.
pub fn send_udp(
    sock: &std::net::UdpSocket,
    to: SocketAddrV4,
    from: Ipv4Addr,
    buf: &[u8],
    segment: Option<u16>,
    tos: u8,
) -> io::Result<usize> {
    if segment.is_some() && *TEST_UDP_GSO_EIO {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    let mut control = Control::default();
    if let Some(s) = segment {
        control.push(SOL_UDP, UDP_SEGMENT, &s.to_ne_bytes());
    }
    if tos != 0 {
        control.push(libc::IPPROTO_IP, libc::IP_TOS, &libc::c_int::from(tos).to_ne_bytes());
    }
    source(&mut control, from);
    send_msg(sock, to, buf, &mut control)
}

/// Ask the kernel to send from our address `from` (`IP_PKTINFO`), for a
/// socket bound to every address: an SA's datagrams leave from the
/// address its peer knows, not the route's preferred source. Unspecified:
/// nothing asked.
pub(super) fn source(control: &mut Control, from: Ipv4Addr) {
    if from.is_unspecified() {
        return;
    }
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr { s_addr: u32::from(from).to_be() },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    // SAFETY: in_pktinfo is plain old data; its bytes are what the kernel reads.
    let bytes = unsafe {
        std::slice::from_raw_parts((&info as *const libc::in_pktinfo).cast::<u8>(), size_of::<libc::in_pktinfo>())
    };
    control.push(libc::IPPROTO_IP, libc::IP_PKTINFO, bytes);
}

/// One `sendmsg` of `buf` to `to` with `control`'s messages.
fn send_msg(sock: &impl AsRawFd, to: SocketAddrV4, buf: &[u8], control: &mut Control) -> io::Result<usize> {
    let mut sa = sockaddr(to);
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: a zeroed msghdr is valid; every pointer set below points at
    // locals that outlive the sendmsg call, with the lengths given.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    control.attach(&mut msg);
    // SAFETY: msg is fully initialised above.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Room for the control messages of one send (a GSO segment size, an
/// `IP_TOS` and an `IP_PKTINFO`), aligned as `cmsghdr` wants.
#[derive(Default)]
pub(crate) struct Control {
    buf: [u64; 10],
    len: usize,
}

impl Control {
    /// Append one control message; one that does not fit is a bug.
    pub(crate) fn push(&mut self, level: libc::c_int, kind: libc::c_int, data: &[u8]) {
        // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
        let (space, len) = unsafe { (libc::CMSG_SPACE(data.len() as u32) as usize, libc::CMSG_LEN(data.len() as u32)) };
        assert!(self.len + space <= size_of_val(&self.buf), "control messages overflow");
        // SAFETY: the header goes at an aligned offset (each space is a
        // multiple of the alignment) inside `buf`, and its data after it,
        // all within `buf` as checked above.
        unsafe {
            let c = self.buf.as_mut_ptr().cast::<u8>().add(self.len).cast::<libc::cmsghdr>();
            std::ptr::write_bytes(c.cast::<u8>(), 0, space);
            (*c).cmsg_level = level;
            (*c).cmsg_type = kind;
            (*c).cmsg_len = len as _;
            std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
        }
        self.len += space;
    }

    /// Point `msg` at these messages (none: no control part).
    pub(crate) fn attach(&mut self, msg: &mut libc::msghdr) {
        if self.len > 0 {
            msg.msg_control = self.buf.as_mut_ptr().cast();
            msg.msg_controllen = self.len as _;
        }
    }
}

/// Set a socket's send and receive buffers to `bytes`, past
/// `net.core.[rw]mem_max` where we may (`SO_*BUFFORCE` needs
/// `CAP_NET_ADMIN`; without it the kernel's cap applies).
pub fn set_socket_buffers(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        set_int_option(sock, libc::SOL_SOCKET, force, v)
            .or_else(|_| set_int_option(sock, libc::SOL_SOCKET, plain, v))?;
    }
    Ok(())
}

/// Datagrams the kernel dropped at this socket since it was made (a full
/// receive buffer, mostly): `SO_MEMINFO`'s `SK_MEMINFO_DROPS` (Linux 4.10).
/// `None` where the kernel does not report it.
pub fn socket_drops(sock: &impl AsRawFd) -> Option<u64> {
    const SO_MEMINFO: libc::c_int = 55;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; SK_MEMINFO_DROPS + 1];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let r =
        unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_MEMINFO, info.as_mut_ptr().cast(), &mut len) };
    (r == 0 && len as usize == size_of_val(&info)).then(|| u64::from(info[SK_MEMINFO_DROPS]))
}

/// `setsockopt` with an `int` value.
fn set_int_option(sock: &impl AsRawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int through the pointer.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

const UDP_GRO: libc::c_int = 104;

/// Ask for UDP GRO on a socket (Linux 5.0): a read may then return many
/// datagrams of one flow and size at once, with their size in a control
/// message (`recv_gro`).
pub fn enable_udp_gro(sock: &impl AsRawFd) -> io::Result<()> {
    set_int_option(sock, SOL_UDP, UDP_GRO, 1)
}

/// What `recv_gro` read.
pub struct GroRead {
    /// Bytes in the buffer.
    pub len: usize,
    /// The sender (IPv4 only).
    pub from: Option<SocketAddrV4>,
    /// Size of each datagram in the buffer (the last may be shorter);
    /// `None`: one datagram.
    pub segment: Option<usize>,
    /// The IPv4 header's TOS byte (with `enable_recv_tos`; else 0).
    pub tos: u8,
    /// The address it was sent to (with `enable_recv_dst`; else `None`).
    pub to: Option<Ipv4Addr>,
    /// The datagram was larger than `buf` and came cut short (`MSG_TRUNC`).
    pub truncated: bool,
    /// It was sent to a broadcast or multicast address, not to one of
    /// ours (with `enable_recv_dst`): no IKE or ESP peer sends there, and
    /// an answer could not leave from it.
    pub not_unicast: bool,
}

/// Ask for each datagram's IPv4 TOS byte (`IP_RECVTOS`), which
/// `recv_gro` then reports.
pub fn enable_recv_tos(sock: &impl AsRawFd) -> io::Result<()> {
    set_int_option(sock, libc::IPPROTO_IP, libc::IP_RECVTOS, 1)
}

/// Ask for each datagram's destination address (`IP_PKTINFO`), which
/// `recv_gro` then reports: a socket bound to every address (0.0.0.0)
/// learns which of them the peer sent to.
pub fn enable_recv_dst(sock: &impl AsRawFd) -> io::Result<()> {
    set_int_option(sock, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
}

/// Receive into `buf` with `recvmsg`, reading the `UDP_GRO`, `IP_TOS` and
/// `IP_PKTINFO` control messages.
pub fn recv_gro(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<GroRead> {
    // SAFETY: zeroed sockaddr_in and msghdr are valid; the pointers set
    // below point at locals that outlive the call, with the lengths given.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for all three (24 + 24 + 32 bytes with their headers).
    let mut control = [0u64; 12];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: msg is initialised above.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut segment, mut tos, mut to, mut not_unicast) = (None, 0, None, false);
    // SAFETY: the CMSG_* walk stays within msg_control/msg_controllen as
    // the kernel filled them in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                segment = usize::try_from(v).ok().filter(|&s| s > 0);
            } else if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TOS {
                tos = *libc::CMSG_DATA(c);
            } else if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                let dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                let spec = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                not_unicast = not_unicast_destination(dst, spec);
                to = Some(dst);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let from = (msg.msg_namelen as usize >= size_of::<libc::sockaddr_in>()
        && sa.sin_family == libc::AF_INET as libc::sa_family_t)
        .then(|| SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)), u16::from_be(sa.sin_port)));
    let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
    Ok(GroRead { len: n as usize, from, segment, tos, to, truncated, not_unicast })
}

/// Whether a datagram the header addressed to `dst` was not sent to a
/// unicast address of ours. `spec` is `IP_PKTINFO`'s `ipi_spec_dst`: the
/// kernel's source for an answer, which is `dst` itself for a unicast
/// address of the host and another for a broadcast (also a subnet's) or a
/// multicast one; 0 where the kernel did not say.
fn not_unicast_destination(dst: Ipv4Addr, spec: Ipv4Addr) -> bool {
    dst.is_broadcast() || dst.is_multicast() || (!spec.is_unspecified() && spec != dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    /// A socket on every address hears a datagram to the loopback's
    /// broadcast address (127.255.255.255, routed on `lo` only) beside one
    /// to 127.0.0.1: `recv_gro` tells them apart.
    #[test]
    fn a_datagram_to_a_broadcast_address_is_told_from_one_to_ours() {
        let rx = UdpSocket::bind("0.0.0.0:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        enable_recv_dst(&rx).unwrap();
        let port = rx.local_addr().unwrap().port();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_broadcast(true).unwrap();
        tx.send_to(b"to all", (Ipv4Addr::new(127, 255, 255, 255), port)).unwrap();
        tx.send_to(b"to us", (Ipv4Addr::LOCALHOST, port)).unwrap();
        let (mut buf, mut got) = (vec![0u8; 64], Vec::new());
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < 2 && Instant::now() < deadline {
            match recv_gro(&rx, &mut buf) {
                Ok(r) => got.push((buf[..r.len].to_vec(), r.to, r.not_unicast)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("recvmsg: {e}"),
            }
        }
        assert_eq!(
            got,
            [
                (b"to all".to_vec(), Some(Ipv4Addr::new(127, 255, 255, 255)), true),
                (b"to us".to_vec(), Some(Ipv4Addr::LOCALHOST), false)
            ]
        );
    }

    #[test]
    fn unicast_is_where_the_answer_would_leave_from() {
        let (ours, bcast) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 255));
        assert!(!not_unicast_destination(ours, ours));
        assert!(!not_unicast_destination(ours, Ipv4Addr::UNSPECIFIED), "the kernel did not say");
        assert!(not_unicast_destination(bcast, ours), "a subnet's broadcast");
        assert!(not_unicast_destination(Ipv4Addr::BROADCAST, Ipv4Addr::UNSPECIFIED));
        assert!(not_unicast_destination(Ipv4Addr::new(224, 0, 0, 1), Ipv4Addr::UNSPECIFIED));
    }
}
