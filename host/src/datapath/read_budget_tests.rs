//! A flood of datagrams that are not ESP (keepalives here; IKE and runts
//! take the same path) does not keep the inbound thread reading: each
//! batch reads at most `READS_PER_BATCH` times its size from a socket,
//! then goes on. Nor does a flood on the UDP socket keep the raw ESP
//! socket's peers from being read, or the other way round.

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

/// The loop above with a raw ESP socket on loopback (root, as raw sockets
/// need), and ESP datagrams of this test's own SPI sent to it (the socket
/// sees every ESP packet on loopback, other tests' too).
fn with_raw(l: &mut Loop, spi: [u8; 4], count: usize) {
    assert!(crate::sys::is_root(), "this test opens a raw IP socket: run it as root");
    let raw = crate::sys::RawEsp::open(std::net::Ipv4Addr::LOCALHOST).expect("raw ESP socket");
    let esp = [&spi[..], &[0, 0, 0, 1], &[0xab; 40][..]].concat();
    let msgs = (0..count).map(|_| (&esp[..], std::net::Ipv4Addr::LOCALHOST, std::net::Ipv4Addr::UNSPECIFIED, 0));
    let mut sent = 0;
    raw.send_many(msgs, |_, r| sent += usize::from(r.is_ok()));
    assert_eq!(sent, count, "raw ESP sent");
    l.raw = Some(raw);
    // Loopback delivers at once; the raw socket's queue is filled now.
    std::thread::sleep(std::time::Duration::from_millis(50));
}

/// How many of the staged packets `..n` carry `spi`.
fn staged_with(l: &Loop, n: usize, spi: [u8; 4]) -> usize {
    l.staging[..n].iter().filter(|p| p.data().get(..4) == Some(&spi[..])).count()
}

#[test]
fn a_flood_on_the_udp_socket_does_not_keep_raw_esp_from_being_read() {
    let (mut l, tx, to) = loop_and_sender();
    crate::sys::set_socket_buffers(&l.udp, 8 << 20).expect("socket buffers");
    let budget = READS_PER_BATCH * l.staging.len();
    for _ in 0..budget * 3 {
        tx.send_to(&[0xff], to).expect("keepalive sent");
    }
    let spi = (0x5a00_0000 | (std::process::id() & 0xffff) << 8 | 1).to_be_bytes();
    with_raw(&mut l, spi, 3);
    // The UDP socket goes first in this batch (they take turns) and reads
    // its budget of keepalives; the raw socket has a budget of its own.
    l.raw_first = true;
    let n = l.read_batch(&[true, true], 0);
    assert!(!l.raw_first, "UDP went first");
    assert_eq!(l.stats.keepalives_rx.load(Ordering::Relaxed), budget as u64, "a budget of the flood");
    assert_eq!(staged_with(&l, n, spi), 3, "and the raw ESP ({n} staged)");
}

#[test]
fn esp_filling_every_batch_on_one_socket_leaves_turns_to_the_other() {
    let (mut l, tx, to) = loop_and_sender();
    crate::sys::set_socket_buffers(&l.udp, 8 << 20).expect("socket buffers");
    let batch = l.staging.len();
    let udp_spi = [0x5b, 0, 0, 1];
    let esp_in_udp = [&udp_spi[..], &[0, 0, 0, 1], &[0xcd; 40][..]].concat();
    for _ in 0..batch * 2 {
        tx.send_to(&esp_in_udp, to).expect("ESP in UDP sent");
    }
    let raw_spi = (0x5c00_0000 | (std::process::id() & 0xffff) << 8 | 2).to_be_bytes();
    with_raw(&mut l, raw_spi, batch * 2);
    // Each socket alone would fill every batch; in two batches both are
    // read.
    let (mut from_udp, mut from_raw) = (0, 0);
    for _ in 0..2 {
        let n = l.read_batch(&[true, true], 0);
        assert_eq!(n, batch, "the batch is full");
        from_udp += staged_with(&l, n, udp_spi);
        from_raw += staged_with(&l, n, raw_spi);
    }
    assert!(from_udp >= batch && from_raw >= batch / 2, "both sockets had turns: {from_udp} from UDP, {from_raw} raw");
}
