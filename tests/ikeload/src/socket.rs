//! One UDP socket on port 500 that sends from, and tells which of, many
//! local addresses (`IP_PKTINFO`): the generator's initiators each have an
//! address of their own (a responder limits IKE_SA_INIT per source address,
//! as RFC 7296 section 2.6 suggests), without a socket each.
use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

pub struct Socket {
    udp: UdpSocket,
}

/// Room for one `IP_PKTINFO` control message.
const CMSG_SPACE: usize = 64;

impl Socket {
    pub fn bind(port: u16) -> io::Result<Socket> {
        let udp = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
        udp.set_nonblocking(true)?;
        set_int(&udp, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        // Thousands of initiators' answers arrive in bursts (the standing
        // SAs' DELETEs are answered at once): with the default 208 KiB
        // the kernel dropped hundreds of them. Without CAP_NET_ADMIN the
        // defaults stay.
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            let _ = set_int(&udp, libc::SOL_SOCKET, opt, 4 << 20);
        }
        Ok(Socket { udp })
    }

    pub fn fd(&self) -> i32 {
        self.udp.as_raw_fd()
    }

    /// Send `data` from local address `from` to `to`.
    pub fn send(&self, from: Ipv4Addr, to: SocketAddrV4, data: &[u8]) -> io::Result<()> {
        let mut dst = sockaddr(to);
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        let mut control = [0u64; CMSG_SPACE / 8];
        // SAFETY: msghdr is integers and pointers; all zeroes is valid.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut dst as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a length.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
        // SAFETY: msg_control points at `control`, large enough for one
        // in_pktinfo message (checked by the length computed above).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr { s_addr: u32::from(from).to_be() },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
        }
        // SAFETY: every pointer in msg is valid for the call.
        let n = unsafe { libc::sendmsg(self.udp.as_raw_fd(), &msg, 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// One waiting datagram into `buf`: its length, sender and the local
    /// address it was sent to; `WouldBlock` when none waits.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, Ipv4Addr)> {
        let mut src = MaybeUninit::<libc::sockaddr_in>::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; CMSG_SPACE / 8];
        // SAFETY: msghdr is integers and pointers; all zeroes is valid.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = src.as_mut_ptr().cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_SPACE;
        // SAFETY: every pointer in msg is valid for writes of the sizes given.
        let n = unsafe { libc::recvmsg(self.udp.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zero-initialised, and the kernel wrote an IPv4 address.
        let src = unsafe { src.assume_init() };
        let from = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(src.sin_addr.s_addr)), u16::from_be(src.sin_port));
        let mut to = Ipv4Addr::UNSPECIFIED;
        // SAFETY: walking the control messages the kernel wrote into
        // `control`, within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                    let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                    to = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok((n as usize, from, to))
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

/// `setsockopt` with an `int` value.
fn set_int(udp: &UdpSocket, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            udp.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
