//! A flood of datagrams that are not ESP (keepalives here; IKE and runts
//! take the same path) does not keep the inbound thread reading: each
//! batch reads at most `READS_PER_BATCH` times its size, then goes on.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;

use super::inbound::READS_PER_BATCH;
use super::*;

/// A loop with the real ESP component whose UDP socket does not block,
/// and a socket that sends to it.
fn loop_and_sender() -> (Loop, UdpSocket, std::net::SocketAddr) {
    let dir = crate::daemon::built_components_dir();
    let rt = Arc::new(Runtime::new(&dir.join("esp.wasm")).expect("ESP component (cargo xtask build)"));
    let l = install_tests::test_loop(rt, Arc::new(Keystore::new()));
    l.udp.set_nonblocking(true).expect("nonblocking");
    let to = l.udp.local_addr().expect("address");
    (l, UdpSocket::bind("127.0.0.1:0").expect("sender"), to)
}

#[test]
fn a_flood_of_keepalives_is_read_a_budget_at_a_time() {
    let (mut l, tx, to) = loop_and_sender();
    // Room for the whole flood in the socket (a 1-byte datagram takes
    // about a kilobyte of the buffer's accounting).
    crate::sys::set_socket_buffers(&l.udp, 8 << 20).expect("socket buffers");
    let budget = READS_PER_BATCH * l.staging.len();
    let flood = budget * 2 + 10;
    for _ in 0..flood {
        tx.send_to(&[0xff], to).expect("keepalive sent");
    }
    let read = |l: &mut Loop| {
        let before = l.stats.keepalives_rx.load(Ordering::Relaxed);
        let n = l.read_batch(&[true], 0);
        (n, l.stats.keepalives_rx.load(Ordering::Relaxed) - before)
    };
    assert_eq!(read(&mut l), (0, budget as u64), "one batch reads its budget and returns");
    assert_eq!(read(&mut l), (0, budget as u64), "the next one the next budget");
    assert_eq!(read(&mut l), (0, 10), "then what is left, until the socket has none");
    assert_eq!(read(&mut l), (0, 0));
}

#[test]
fn a_datagram_larger_than_a_packet_buffer_is_a_runt_not_a_cut_packet() {
    // Cut to the buffer, it would go to the guest as ESP (SPI 0x11111111)
    // and be counted as an integrity failure, which it is not.
    let (mut l, tx, to) = loop_and_sender();
    tx.send_to(&[0x11; crate::packet::MAX_PACKET + 1000], to).expect("sent");
    tx.send_to(&[0x11; 100], to).expect("sent");
    let n = l.read_batch(&[true], 0);
    assert_eq!(n, 1, "only the datagram that fits is staged");
    assert_eq!(l.staging[0].len(), 100);
    assert_eq!(l.stats.rx_runts.load(Ordering::Relaxed), 1, "the other is counted as a runt");
}
