//! The host holds an SA to its hard packet limit across a replaced guest:
//! the replacement is installed with what is left, so the real ESP
//! component plans no packet the host would refuse, and the SA's hard
//! expiry is reported once, whoever found it.

use std::time::Duration;

use super::install_tests::{add_outbound, udp_to_net, wired_loop};
use super::*;
use crate::wasm::esp::{EncapVerdict, SaLimits};

const NAME: u32 = 0x6001;

/// Seal `n` packets to 10.0.1.0/24 with group 0's instance: the verdicts.
fn send(l: &mut Loop, n: usize) -> Vec<EncapVerdict> {
    send_to(l, 1, n)
}

/// Seal `n` packets to 10.0.`net`.0/24 with group 0's instance: the verdicts.
fn send_to(l: &mut Loop, net: u8, n: usize) -> Vec<EncapVerdict> {
    let inst = l.groups.list[0].inst.as_mut().expect("the group's instance");
    inst.store.data_mut().batch = (0..n).map(|_| udp_to_net(net)).collect();
    let verdicts = inst.encap(n).expect("no trap");
    assert_eq!(inst.store.data().refusals, 0, "the guest asked for nothing it may not");
    verdicts
}

/// The hard expiries reported up for `NAME` since the last look.
fn hard_reports(l: &mut Loop, reports: &channel::Receiver<Report>) -> usize {
    expiries(l, reports).1
}

/// The (soft, hard) expiries reported up for `NAME` since the last look.
fn expiries(l: &mut Loop, reports: &channel::Receiver<Report>) -> (usize, usize) {
    let mut long_ago = Instant::now() - Duration::from_secs(1);
    l.report_expiries(&mut long_ago);
    let got = reports.drain();
    let of = |hard| got.iter().filter(|r| matches!(r, Report::Expired { spi: NAME, hard: h } if *h == hard)).count();
    (of(false), of(true))
}

#[test]
fn the_soft_limit_is_reported_once_also_when_the_guest_that_passed_it_is_gone() {
    let (mut l, ks, to_loop, reports) = wired_loop();
    let limits = SaLimits { soft_packets: 2, hard_packets: 50, ..SaLimits::default() };
    let (_, command) = add_outbound(&ks, (NAME, 0xc000_0002), 1, 4, limits);
    assert!(to_loop.send(command));
    l.apply_commands(true);
    // An honest guest reports it, and the host's count with it: once.
    send(&mut l, 3);
    assert_eq!(expiries(&mut l, &reports), (1, 0));
    send(&mut l, 3);
    assert_eq!(expiries(&mut l, &reports), (0, 0), "not again");

    // A second SA whose guest passed the soft limit and was replaced
    // before anything was reported (a trap): the replacement is installed
    // without the soft limit, so only the host's count can report it, at
    // the SA's next packet.
    const OTHER: u32 = NAME + 1;
    let (_, command) = add_outbound(&ks, (OTHER, 0xc000_0003), 2, 5, limits);
    assert!(to_loop.send(command));
    l.apply_commands(true);
    let send_other = |l: &mut Loop, n: usize| {
        assert!(send_to(l, 2, n).iter().all(|v| matches!(v, EncapVerdict::Send(_))));
    };
    send_other(&mut l, 3);
    let group = &mut l.groups.list[0];
    group.inst = Some(group.instantiate(&l.runtime).expect("a replacement"));
    send_other(&mut l, 1);
    let mut long_ago = Instant::now() - Duration::from_secs(1);
    l.report_expiries(&mut long_ago);
    let got = reports.drain();
    let soft = got.iter().filter(|r| matches!(r, Report::Expired { spi: OTHER, hard: false })).count();
    assert_eq!(soft, 1, "{got:?}");
}

#[test]
fn a_replaced_guest_gets_what_is_left_of_the_limits_and_the_end_is_reported_once() {
    let (mut l, ks, to_loop, reports) = wired_loop();
    let limits = SaLimits { hard_packets: 5, ..SaLimits::default() };
    let (handle, command) = add_outbound(&ks, (NAME, 0xc000_0001), 1, 3, limits);
    assert!(to_loop.send(command));
    l.apply_commands(true);
    assert!(reports.drain().is_empty(), "installed");

    let sent = |v: &[EncapVerdict]| v.iter().filter(|v| matches!(v, EncapVerdict::Send(_))).count();
    assert_eq!(sent(&send(&mut l, 3)), 3);
    let key = ks.get(handle).expect("the key");
    assert_eq!(key.usage().get().0, 3, "the host counted what it sealed");
    assert_eq!(hard_reports(&mut l, &reports), 0);

    // The guest is replaced (a trap, say): the new one knows of 2 packets left.
    let group = &mut l.groups.list[0];
    group.inst = Some(group.instantiate(&l.runtime).expect("a replacement"));
    let v = send(&mut l, 4);
    assert_eq!(sent(&v), 2, "{v:?}");
    assert_eq!(v[2..], [EncapVerdict::Drop(DropReason::SaExpired); 2], "the honest guest stops where the host would");
    assert_eq!(key.usage().get().0, 5);
    assert_eq!(hard_reports(&mut l, &reports), 1, "the guest's expiry");

    // Replaced again at the limit: installed with one packet, which the
    // host refuses; the expiry is not reported a second time.
    let group = &mut l.groups.list[0];
    group.inst = Some(group.instantiate(&l.runtime).expect("a replacement"));
    let v = send(&mut l, 2);
    assert_eq!(sent(&v), 0, "{v:?}");
    assert_eq!(key.usage().get().0, 5);
    assert_eq!(hard_reports(&mut l, &reports), 0);
}

#[test]
fn a_limit_the_host_found_is_reported_after_the_guest_is_replaced() {
    // The soft limit is passed, and both the guest's report and the
    // host's wait for the next poll when the guest traps: the replacement
    // is installed past the limit and never reports it, so the host's
    // list goes over to it, or the rekey would wait for the SA's next packet.
    let (mut l, ks, to_loop, reports) = wired_loop();
    let limits = SaLimits { soft_packets: 2, hard_packets: 50, ..SaLimits::default() };
    let (_, command) = add_outbound(&ks, (NAME, 0xc000_0004), 1, 6, limits);
    assert!(to_loop.send(command));
    l.apply_commands(true);
    send(&mut l, 3);
    l.replace(0, Direction::Outbound);
    assert_eq!(expiries(&mut l, &reports), (1, 0), "reported once, by the host's count");
}
