//! IKE datagrams that arrive on UDP 4500 go from the data path to the IKE
//! thread through a queue with a bound, so that a flood of them is dropped
//! and counted instead of held in memory.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;

use super::inbound::MAX_QUEUED_IKE;
use super::install_tests::wired_loop;
use super::*;

/// Put a non-ESP-marked IKE datagram of `len` bytes in staging slot 0 and
/// let the loop classify it.
fn arrive(l: &mut Loop, len: usize) {
    let from = Some(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 4500));
    let p = &mut l.staging[0];
    p.recv_area()[..len].fill(0);
    p.recv_area()[4..len].fill(0x22);
    p.set_received(len);
    let to = Some(Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(l.take_datagram(0, from, 0, to), 0, "the slot is free again");
}

#[test]
fn ike_datagrams_wait_for_the_ike_thread_up_to_a_bound() {
    let (mut l, _, _, reports) = wired_loop();
    let st = l.stats.clone();
    for _ in 0..MAX_QUEUED_IKE + 5 {
        arrive(&mut l, 4 + 28);
    }
    assert_eq!(st.ike_queue_full.load(Ordering::Relaxed), 5);
    // Too large for IKE: dropped before a copy, not queued.
    arrive(&mut l, 4 + 10_001);
    assert_eq!(st.ike_oversize.load(Ordering::Relaxed), 1);
    // The IKE thread takes what waits; then there is room again.
    assert_eq!(reports.drain().len(), MAX_QUEUED_IKE);
    arrive(&mut l, 4 + 28);
    let taken = reports.drain();
    assert_eq!(taken.len(), 1);
    // With the address it was sent to, for a socket on every address.
    let to = Some(Ipv4Addr::new(198, 51, 100, 1));
    assert!(matches!(&taken[0], Report::Ike { to: t, data, .. } if *t == to && data.len() == 28), "{:?}", taken[0]);
    assert_eq!(st.ike_queue_full.load(Ordering::Relaxed), 5);
}
