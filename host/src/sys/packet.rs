//! Packet sockets (AF_PACKET) for sending IPv4 datagrams to a next hop
//! we name, and an rtnetlink socket to ask the kernel for that next hop.
use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{Control, RAW_BATCH, owned, sendmmsg_each};

/// A datagram for a packet socket: its IPv4 header and payload, the
/// interface it leaves by, the next hop's Ethernet address, and the
/// queueing priority (`SO_PRIORITY`) to send it with.
pub struct LinkDatagram<'a> {
    pub head: &'a [u8],
    pub data: &'a [u8],
    pub ifindex: i32,
    pub mac: [u8; 6],
    pub priority: u32,
}

/// A send-only packet socket (SOCK_DGRAM: the kernel writes the Ethernet
/// header; protocol 0: nothing is received on it).
pub struct PacketSocket {
    fd: OwnedFd,
    /// The kernel takes a priority per message (an `SO_PRIORITY` control
    /// message, Linux 6.14); cleared when it refuses one.
    priority_messages: Cell<bool>,
}

impl PacketSocket {
    pub fn open() -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2) call; the fd is checked.
        let fd = owned(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        Ok(PacketSocket { fd, priority_messages: Cell::new(true) })
    }

    /// Whether priorities still go with the messages: a kernel without
    /// `SO_PRIORITY` control messages refuses the first with `EINVAL`,
    /// and from then on they are sent without (the caller sends that one
    /// through the IP socket).
    pub fn priorities(&self) -> bool {
        self.priority_messages.get()
    }

    /// Send the first [`RAW_BATCH`] of `msgs` in order with as few
    /// `sendmmsg(2)` calls as the kernel allows; `sent(i, result)` hears
    /// what became of the `i`th, in order, before the next is sent.
    pub fn send_many<'a>(&self, msgs: impl Iterator<Item = LinkDatagram<'a>>, sent: impl FnMut(usize, io::Result<()>)) {
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; RAW_BATCH];
        let mut iovs = [const { MaybeUninit::<[libc::iovec; 2]>::uninit() }; RAW_BATCH];
        let mut addrs = [const { MaybeUninit::<libc::sockaddr_ll>::uninit() }; RAW_BATCH];
        let mut controls = [const { MaybeUninit::<Control>::uninit() }; RAW_BATCH];
        let mut prioritised = [false; RAW_BATCH];
        let with_priority = self.priority_messages.get();
        let mut n = 0;
        for (i, m) in msgs.take(RAW_BATCH).enumerate() {
            n = i + 1;
            // SAFETY: sockaddr_ll is plain old data; zero is a valid value.
            let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            a.sll_family = libc::AF_PACKET as u16;
            a.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            a.sll_ifindex = m.ifindex;
            a.sll_halen = 6;
            a.sll_addr[..6].copy_from_slice(&m.mac);
            let addr = addrs[i].write(a);
            let iov = iovs[i].write([
                libc::iovec { iov_base: m.head.as_ptr() as *mut libc::c_void, iov_len: m.head.len() },
                libc::iovec { iov_base: m.data.as_ptr() as *mut libc::c_void, iov_len: m.data.len() },
            ]);
            // SAFETY: mmsghdr is integers and pointers; zero is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov.as_mut_ptr();
            h.msg_hdr.msg_iovlen = 2;
            h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_ll).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            let h = hdrs[i].write(h);
            if with_priority && m.priority != 0 {
                let c = controls[i].write(Control::default());
                c.push(libc::SOL_SOCKET, priority_cmsg_type(), &(m.priority as libc::c_int).to_ne_bytes());
                c.attach(&mut h.msg_hdr);
                prioritised[i] = true;
            }
        }
        let mut sent = sent;
        let each = |i: usize, r: io::Result<()>| {
            if prioritised[i] && r.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL)) {
                self.priority_messages.set(false);
            }
            sent(i, r)
        };
        // SAFETY: hdrs[..n] were written above and point at iovecs,
        // addresses and control messages in this frame, over buffers lent
        // for the call.
        unsafe { sendmmsg_each(self.fd.as_raw_fd(), hdrs.as_mut_ptr().cast(), n, each) };
    }
}

/// The control message that carries a datagram's priority.
#[cfg(not(test))]
fn priority_cmsg_type() -> i32 {
    libc::SO_PRIORITY
}

/// Tests stand in another type, which the kernel refuses as one before
/// 6.14 refuses `SO_PRIORITY`.
#[cfg(test)]
fn priority_cmsg_type() -> i32 {
    tests::PRIORITY_TYPE.get()
}

/// An rtnetlink socket for one request at a time (the caller builds and
/// parses the messages).
pub struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    /// A netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`).
    pub fn open(protocol: i32) -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the fd is checked.
        let fd = owned(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) })?;
        // The kernel answers at once; the bound keeps a lost answer from
        // holding the data path.
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        // SAFETY: tv is a valid timeval of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd })
    }

    /// Send one message to the kernel.
    pub fn send(&self, m: &[u8]) -> io::Result<()> {
        // SAFETY: m is valid for reads of its length; the kernel is the
        // default destination of a netlink socket.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Receive one datagram of answers into `buf`; its length.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        pub(crate) static PRIORITY_TYPE: Cell<i32> = const { Cell::new(libc::SO_PRIORITY) };
    }

    /// In a network namespace of this thread's own, on its loopback: a
    /// kernel that refuses the priority's control message (`EINVAL`, here
    /// for a type it does not know) refuses the datagrams that carry one,
    /// and from then on the socket sends without; one that takes it sends.
    #[test]
    fn a_refused_priority_message_is_dropped_from_then_on() {
        std::thread::spawn(|| {
            crate::sys::unshare_net().expect("a network namespace for this thread (root)");
            let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap();
            assert!(up.success());
            let head = {
                let mut h = [0u8; 20];
                wasmsec_wire::ipv4::Repr {
                    src_addr: [127, 0, 0, 1],
                    dst_addr: [127, 0, 0, 1],
                    protocol: 50,
                    payload_len: 16,
                    ttl: 64,
                    dscp_ecn: 0,
                }
                .emit(&mut h)
                .unwrap();
                h
            };
            let data = [0u8; 16];
            let d = |priority| LinkDatagram { head: &head, data: &data, ifindex: 1, mac: [0; 6], priority };
            let send = |s: &PacketSocket, priorities: &[u32]| {
                let mut got = Vec::new();
                s.send_many(priorities.iter().map(|&p| d(p)), |i, r| got.push((i, r.map_err(|e| e.raw_os_error()))));
                got
            };

            PRIORITY_TYPE.set(0x7ff0);
            let s = PacketSocket::open().unwrap();
            assert!(s.priorities());
            let einval = Err(Some(libc::EINVAL));
            assert_eq!(send(&s, &[6, 0, 6]), [(0, einval), (1, Ok(())), (2, einval)]);
            assert!(!s.priorities(), "refused: no more priorities");
            assert_eq!(send(&s, &[6]), [(0, Ok(()))], "sent without one");

            PRIORITY_TYPE.set(libc::SO_PRIORITY);
            let s = PacketSocket::open().unwrap();
            let taken = send(&s, &[6]);
            // This kernel (6.14 or later) takes SO_PRIORITY; an older one
            // refuses it as above.
            if taken == [(0, Ok(()))] {
                assert!(s.priorities());
            } else {
                assert_eq!(taken, [(0, einval)]);
                assert!(!s.priorities());
            }
        })
        .join()
        .unwrap();
    }
}
