//! The few system calls std does not wrap: TUN devices, raw ESP sockets,
//! UDP's control messages (`udp`), packet and rtnetlink sockets (`packet`)
//! and poll(2). All `unsafe` in the host lives here, each block small and
//! commented.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

mod iproute;
mod packet;
mod udp;
pub use iproute::{ip, ip_batch};
/// The control message type a test's packet sockets send a priority as.
#[cfg(test)]
pub(crate) use packet::tests::PRIORITY_TYPE;
pub use packet::{LinkDatagram, Netlink, PacketSocket};
use udp::{Control, source};
pub use udp::{
    GroRead, enable_recv_dst, enable_recv_tos, enable_udp_gro, recv_gro, send_udp, set_socket_buffers, socket_drops,
};

/// A TUN device (layer 3, no packet-information header), with a
/// `virtio_net_hdr` in front of every packet when the kernel granted
/// offloads (see `offload`).
pub struct Tun {
    /// The non-blocking /dev/net/tun file descriptor.
    fd: OwnedFd,
    /// The interface name.
    name: String,
    /// Opened with `IFF_VNET_HDR` and TSO/checksum offload granted.
    vnet: bool,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_VNET_HDR: libc::c_int = 0x4000;
/// `TUNSETOFFLOAD` bits: checksum, TSO for IPv4 and IPv6, and TSO of
/// packets with ECN's CWR set (our segmenter clears it after the first).
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Create (or attach to) the TUN device `name`, non-blocking. With
    /// `offload`, ask for TSO and checksum offload: the kernel then hands
    /// over TCP super-packets of up to 64 KiB (cut by `offload::segment`)
    /// instead of segmenting them itself. Where it refuses, the device is
    /// opened again without them and works packet by packet; `vnet()`
    /// says which.
    pub fn open(name: &str, offload: bool) -> io::Result<Tun> {
        if offload {
            match Tun::open_with(name, true) {
                Ok(t) => return Ok(t),
                Err(e) => tracing::warn!(tun = name, error = %e, "TUN offloads refused; reading packet by packet"),
            }
        }
        Tun::open_with(name, false)
    }

    fn open_with(name: &str, vnet: bool) -> io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
        }
        let path = CString::new("/dev/net/tun").expect("no NUL");
        // SAFETY: path is a valid C string; the returned fd is checked.
        let fd = owned(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | if vnet { IFF_VNET_HDR } else { 0 }) as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if vnet {
            let size = crate::offload::vnet::LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &size) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
            // SAFETY: TUNSETOFFLOAD takes the flags as the argument itself.
            if refuse_offload() || unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
                return Err(io::Error::other(format!("TUNSETOFFLOAD: {}", io::Error::last_os_error())));
            }
        }
        Ok(Tun { fd, name: name.to_string(), vnet })
    }

    /// Whether every packet read or written carries a `virtio_net_hdr`.
    pub fn vnet(&self) -> bool {
        self.vnet
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another handle on the same device (one thread reads, one writes).
    pub fn try_clone(&self) -> io::Result<Tun> {
        Ok(Tun { fd: self.fd.try_clone()?, name: self.name.clone(), vnet: self.vnet })
    }

    /// Read one packet; `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Write one packet (behind an all-zero `virtio_net_hdr`, "nothing to
    /// do", on a `vnet` device).
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        if self.vnet {
            return self.send_with(&[0; crate::offload::vnet::LEN], buf);
        }
        // SAFETY: buf is valid for reads of buf.len() bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Write `hdr` and `buf` as one packet (writev: no copy to join them).
    pub fn send_with(&self, hdr: &[u8], buf: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec { iov_base: hdr.as_ptr() as *mut libc::c_void, iov_len: hdr.len() },
            libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() },
        ];
        // SAFETY: both iovecs point at live slices of the given lengths,
        // which writev only reads.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

/// Tests only: `WASMSEC_TEST_REFUSE_TUN_OFFLOAD=1` makes `TUNSETOFFLOAD`
/// count as refused, as an old kernel or a restricted sandbox would, so
/// the fallback is exercised on a kernel that grants it.
fn refuse_offload() -> bool {
    std::env::var_os("WASMSEC_TEST_REFUSE_TUN_OFFLOAD").is_some_and(|v| v == "1")
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A raw IPv4 socket for IP protocol 50 (ESP without UDP encapsulation).
/// Received datagrams start with the IPv4 header; sent ones do not.
pub struct RawEsp {
    /// The non-blocking raw socket.
    fd: OwnedFd,
}

impl RawEsp {
    pub fn open(bind: Ipv4Addr) -> io::Result<RawEsp> {
        // SAFETY: plain socket(2) call; the fd is checked.
        let fd = owned(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::IPPROTO_ESP)
        })?;
        let sa = sockaddr(SocketAddrV4::new(bind, 0));
        // SAFETY: sa is a valid sockaddr_in of the size given.
        let r = unsafe {
            libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as u32)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawEsp { fd })
    }

    pub fn try_clone(&self) -> io::Result<RawEsp> {
        Ok(RawEsp { fd: self.fd.try_clone()? })
    }

    /// Receive one datagram (IPv4 header included) and its source.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, Ipv4Addr)> {
        // SAFETY: zeroed sockaddr_in is a valid out-parameter.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: buf and sa are valid for writes of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut sa as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((n as usize, Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))))
    }

    /// Send one datagram to `to` from our address `from` (unspecified:
    /// the socket's; `source`), with `tos` as its header's DSCP and ECN
    /// byte (0: the socket's, which is 0).
    pub fn send_to(&self, buf: &[u8], to: Ipv4Addr, from: Ipv4Addr, tos: u8) -> io::Result<usize> {
        let mut sa = sockaddr(SocketAddrV4::new(to, 0));
        let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut control = Control::default();
        let mut h = message(&mut iov);
        h.msg_hdr.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
        h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        if tos != 0 {
            control.push(libc::IPPROTO_IP, libc::IP_TOS, &libc::c_int::from(tos).to_ne_bytes());
        }
        source(&mut control, from);
        control.attach(&mut h.msg_hdr);
        // SAFETY: h points at iov, sa and control, locals that outlive the
        // call, over `buf` lent for it.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &h.msg_hdr, 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

/// Own a descriptor fresh from open(2), socket(2) or the like, or the
/// error its negative result stands for.
pub(crate) fn owned(raw: libc::c_int) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor the caller just got and owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Send the `n` messages at `hdrs` in order with as few `sendmmsg(2)`
/// calls as the kernel allows; `sent(i, result)` hears what became of the
/// `i`th. A message the kernel refuses is reported and skipped, and the
/// rest still go.
///
/// # Safety
/// `hdrs[..n]` must be initialised, and what they point at (names,
/// iovecs, buffers) valid for reads until this returns.
pub(crate) unsafe fn sendmmsg_each(
    fd: RawFd,
    hdrs: *mut libc::mmsghdr,
    n: usize,
    mut sent: impl FnMut(usize, io::Result<()>),
) {
    let mut at = 0;
    while at < n {
        // SAFETY: by the caller's promise, hdrs[at..n] are valid.
        let r = unsafe { libc::sendmmsg(fd, hdrs.add(at), (n - at) as u32, 0) };
        if r < 0 {
            // The first message failed: report it, go on after it.
            sent(at, Err(io::Error::last_os_error()));
            at += 1;
            continue;
        }
        for i in at..at + r as usize {
            sent(i, Ok(()));
        }
        at += r as usize;
    }
}

/// Datagrams one `sendmmsg`/`recvmmsg` call on a raw ESP socket moves at
/// most (a raw IP socket has no GSO or GRO, so batching the system calls
/// is what is left to cut the per-packet cost).
pub const RAW_BATCH: usize = 64;

impl RawEsp {
    /// Send each `(datagram, peer, our address, TOS)` of `msgs` (as
    /// `send_to` takes them) with as few `sendmmsg(2)`
    /// calls as the kernel allows; `sent(i, result)` hears what became of
    /// the `i`th. A message the kernel refuses is reported and skipped, and
    /// the rest still go.
    pub fn send_many<'a>(
        &self,
        msgs: impl Iterator<Item = (&'a [u8], Ipv4Addr, Ipv4Addr, u8)>,
        mut sent: impl FnMut(usize, io::Result<()>),
    ) {
        let mut msgs = msgs.peekable();
        let mut first = 0;
        // Only the entries a call uses are written: the arrays stay
        // uninitialised past `n` (a full zeroing would be ~6 KB per call).
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; RAW_BATCH];
        let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; RAW_BATCH];
        let mut addrs = [const { MaybeUninit::<libc::sockaddr_in>::uninit() }; RAW_BATCH];
        let mut controls = [const { MaybeUninit::<Control>::uninit() }; RAW_BATCH];
        while msgs.peek().is_some() {
            let mut n = 0;
            for (data, to, from, tos) in msgs.by_ref().take(RAW_BATCH) {
                let addr = addrs[n].write(sockaddr(SocketAddrV4::new(to, 0)));
                let iov =
                    iovs[n].write(libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() });
                let hdr = hdrs[n].write(message(iov));
                hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
                hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                if tos != 0 || !from.is_unspecified() {
                    let c = controls[n].write(Control::default());
                    if tos != 0 {
                        c.push(libc::IPPROTO_IP, libc::IP_TOS, &libc::c_int::from(tos).to_ne_bytes());
                    }
                    source(c, from);
                    c.attach(&mut hdr.msg_hdr);
                }
                n += 1;
            }
            // SAFETY: hdrs[..n] were written above and point at iovecs and
            // addresses in this frame, over datagrams lent for this call.
            unsafe { sendmmsg_each(self.fd.as_raw_fd(), hdrs.as_mut_ptr().cast(), n, |i, r| sent(first + i, r)) };
            first += n;
        }
    }

    /// Receive up to `lens.len()` (at most [`RAW_BATCH`]) datagrams, IPv4
    /// header included, with one `recvmmsg(2)` call, one into each of
    /// `bufs` in order; their lengths go to `lens`. Returns how many came
    /// (`WouldBlock` when none was waiting). A datagram larger than its
    /// buffer, which came cut short, gets length 0 (a runt to the caller).
    pub fn recv_many<'a>(&self, bufs: impl Iterator<Item = &'a mut [u8]>, lens: &mut [usize]) -> io::Result<usize> {
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; RAW_BATCH];
        let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; RAW_BATCH];
        let mut n = 0;
        for buf in bufs.take(lens.len().min(RAW_BATCH)) {
            let iov = iovs[n].write(libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() });
            hdrs[n].write(message(iov));
            n += 1;
        }
        let hdrs = hdrs.as_mut_ptr().cast::<libc::mmsghdr>();
        // SAFETY: hdrs[..n] are initialised and point at iovecs over buffers
        // borrowed mutably for this call; no source address is asked for.
        let r =
            unsafe { libc::recvmmsg(self.fd.as_raw_fd(), hdrs, n as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        for (i, len) in lens.iter_mut().enumerate().take(r as usize) {
            // SAFETY: i < r <= n: an entry written above, filled in by the kernel.
            let h = unsafe { &*hdrs.add(i) };
            *len = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 { 0 } else { h.msg_len as usize };
        }
        Ok(r as usize)
    }
}

impl std::os::fd::AsFd for RawEsp {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for RawEsp {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A message header for one datagram in `iov`, no address, no control data.
fn message(iov: &mut libc::iovec) -> libc::mmsghdr {
    // SAFETY: mmsghdr is integers and pointers, for which all zeroes (null
    // pointers) is a valid value.
    let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = 1;
    h
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

/// Wait until one of `fds` is readable or `timeout_ms` passes; returns
/// which are readable. A stop ([`request_stop`], SIGTERM, SIGINT) ends
/// the wait too, so every loop that waits here notices it at once. For
/// loops that wait often, [`PollSet`] keeps its arrays.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    PollSet::default().wait(fds, timeout_ms).map(<[bool]>::to_vec)
}

/// [`poll_readable`] with the arrays kept from one wait to the next.
#[derive(Default)]
pub struct PollSet {
    p: Vec<libc::pollfd>,
    ready: Vec<bool>,
}

impl PollSet {
    /// Which of `fds` are readable, after at most `timeout_ms`.
    pub fn wait(&mut self, fds: &[RawFd], timeout_ms: i32) -> io::Result<&[bool]> {
        self.p.clear();
        self.p.extend(fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }));
        let stop = STOP_READ_FD.load(Ordering::Relaxed);
        if stop >= 0 {
            self.p.push(libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: p is a valid array of p.len() pollfds.
        let n = unsafe { libc::poll(self.p.as_mut_ptr(), self.p.len() as libc::nfds_t, timeout_ms) };
        self.ready.clear();
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            self.ready.resize(fds.len(), false);
            return Ok(&self.ready);
        }
        let mask = libc::POLLIN | libc::POLLERR | libc::POLLHUP;
        self.ready.extend(self.p[..fds.len()].iter().map(|x| x.revents & mask != 0));
        Ok(&self.ready)
    }
}

/// Raise the soft limit on open files to the hard one and return it.
/// Every tenant holds descriptors of its own (its TUN device among them),
/// so a few hundred tenants pass the usual soft limit of 1,024; the hard
/// limit is what the operator allows (systemd `LimitNOFILE=`, the
/// container runtime). Safe here: the daemon waits with poll(2), never
/// select(2), so descriptors above 1,023 are fine.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if l.rlim_cur < l.rlim_max {
        let raised = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        l.rlim_cur = l.rlim_max;
    }
    Ok(l.rlim_cur)
}

static STOP: AtomicBool = AtomicBool::new(false);
/// A pipe that becomes readable, and stays so (it is never read), when a
/// stop is requested: [`poll_readable`] waits on it as well. -1 until
/// [`install_stop_handler`].
static STOP_READ_FD: AtomicI32 = AtomicI32::new(-1);
static STOP_WAKE_FD: AtomicI32 = AtomicI32::new(-1);

fn stop_now() {
    STOP.store(true, Ordering::SeqCst);
    let fd = STOP_WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) of one byte from a live buffer; async-signal-safe.
        // A full pipe (a second stop) is fine: it is readable already.
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    stop_now();
}

/// Route SIGINT and SIGTERM to a flag the loops check and to the pipe
/// their waits watch.
pub fn install_stop_handler() {
    let mut fds = [-1; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } == 0 {
        STOP_READ_FD.store(fds[0], Ordering::SeqCst);
        STOP_WAKE_FD.store(fds[1], Ordering::SeqCst);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: on_signal is async-signal-safe (atomics and one write).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Let a closed pipe end the process quietly, as in any Unix filter
/// (`wasmsec list-sas | head`): Rust ignores SIGPIPE and `println!` would
/// panic on EPIPE. For the CLI verbs only; the daemon keeps ignoring it.
pub fn default_sigpipe() {
    // SAFETY: restoring a signal's default disposition has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub fn request_stop() {
    stop_now();
}

/// BPF programs that run on this process's outgoing IP packets from its
/// cgroup v2 `dir` (`BPF_CGROUP_INET_EGRESS`, attached there or above it).
pub fn cgroup_egress_programs(dir: &std::path::Path) -> io::Result<u32> {
    /// The `BPF_PROG_QUERY` part of `union bpf_attr`, with zeros after it
    /// (newer kernels' fields: no output wanted).
    #[repr(C)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        rest: [u32; 17],
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_CGROUP_INET_EGRESS: u32 = 1;
    const BPF_F_QUERY_EFFECTIVE: u32 = 1;
    let cgroup = std::fs::File::open(dir)?;
    let mut q = Query {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_INET_EGRESS,
        query_flags: BPF_F_QUERY_EFFECTIVE,
        attach_flags: 0,
        prog_ids: 0,
        prog_cnt: 0,
        rest: [0; 17],
    };
    // SAFETY: q is a valid, writable bpf_attr prefix of the size given;
    // with no prog_ids buffer the kernel writes only prog_cnt and flags.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut q as *mut Query, size_of::<Query>()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(q.prog_cnt)
}

/// Tests only: move the calling thread into a new, empty network
/// namespace (the rest of the process stays where it is; children it
/// starts, such as `ip`, inherit it).
#[cfg(test)]
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare(2) with one flag; it changes only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective user id is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Send `sig` to a process we started.
pub fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) with a pid of a child we spawned.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

pub use libc::{SIGINT, SIGKILL, SIGTERM};

/// Run `f` with the process umask set to `mask`, then restore it: files and
/// sockets `f` creates are born with the permissions meant for them, with
/// no window in which they are wider.
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask(2) cannot fail; it only swaps the process's mask.
    let old = unsafe { libc::umask(mask) };
    let r = f();
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    r
}

/// A non-blocking inotify descriptor watching directory `dir` for files
/// written and closed, or moved in (an atomic replace, a Kubernetes
/// ConfigMap update), or the directory going away.
pub fn watch_dir(dir: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: no pointers; the result is checked and then owned.
    let fd = owned(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_DELETE_SELF;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Read and discard everything pending on a non-blocking descriptor.
pub fn drain(fd: RawFd) {
    let mut buf = [0u8; 4096];
    // SAFETY: reads into a buffer we own, at most its length.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Ask the CPU to bring every cache line of `v` into the cache, without
/// waiting for it. The data path does this for a batch's keys before it
/// uses the first: with packets for many SAs the keys are cold, and their
/// cache misses then overlap instead of following one another.
pub fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = (v as *const T).cast::<i8>();
        for off in (0..std::mem::size_of::<T>()).step_by(64) {
            // SAFETY: a prefetch is only a hint: it never faults and reads
            // nothing into the program, and the address lies within `v`.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Ask the CPU for the cache line at `addr` (any address: a prefetch is
/// only a hint and never faults).
pub fn prefetch_at(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing into the program and never faults,
    // whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Give the heap's free pages back to the kernel (glibc's `malloc_trim`:
/// every arena, not only the top of the main heap, which glibc trims by
/// itself). True when some memory was released.
pub fn trim_heap() -> bool {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own
    // arenas under their locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// This process's resident set in bytes (`/proc/self/statm`), or 0.
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page
}

#[cfg(test)]
mod tests {
    #[test]
    fn open_files_limit_is_raised_to_the_hard_one() {
        let got = super::raise_open_files_limit().unwrap();
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit with a valid rlimit struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        assert_eq!((got, l.rlim_cur), (l.rlim_max, l.rlim_max));
    }

    use super::*;
    use std::time::{Duration, Instant};

    /// Raw ESP batches on loopback (needs root, as raw sockets do): a
    /// datagram the kernel refuses (too long for IPv4) is reported and
    /// skipped, those around it still leave, and one `recvmmsg` hands back
    /// several with their IPv4 headers.
    #[test]
    fn raw_esp_batches_skip_a_refused_datagram() {
        assert!(is_root(), "this test opens a raw IP socket: run it as root");
        let sock = RawEsp::open(Ipv4Addr::LOCALHOST).expect("raw ESP socket");
        let spi = std::process::id().to_be_bytes();
        let esp = |seq: u8| [&spi[..], &[0, 0, 0, seq], &[0xab; 40][..]].concat();
        let (a, b, huge) = (esp(1), esp(2), vec![0u8; 70_000]);
        // The first with DSCP EF and ECT(0), the last with the socket's TOS.
        let lo = Ipv4Addr::LOCALHOST;
        // The last from 127.0.0.2 (`IP_PKTINFO`), the others from the bound address.
        let (any, second) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(127, 0, 0, 2));
        let msgs = [(&a[..], lo, any, 0xba), (&huge[..], lo, any, 0), (&b[..], lo, second, 0)];
        let mut results = Vec::new();
        sock.send_many(msgs.into_iter(), |i, r| results.push((i, r.is_ok())));
        assert_eq!(results, [(0, true), (1, false), (2, true)]);

        let mut bufs = vec![vec![0u8; 2048]; 8];
        let mut lens = [0usize; 8];
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.len() < 2 && Instant::now() < deadline {
            match sock.recv_many(bufs.iter_mut().map(|b| &mut b[..]), &mut lens) {
                Ok(n) => {
                    for (buf, &len) in bufs.iter().zip(&lens[..n]) {
                        // Ours: after the 20-byte IPv4 header, our SPI.
                        if len == 20 + a.len() && buf[20..24] == spi {
                            seen.push((buf[27], buf[1], buf[12..16].to_vec()));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        assert_eq!(
            seen,
            [(1, 0xba, vec![127, 0, 0, 1]), (2, 0, vec![127, 0, 0, 2])],
            "both datagrams around the refused one arrive, in order, with their TOS and source"
        );
    }
}
