//! The daemon's own domain keeps its ESP instances while they hold no SA,
//! and a wasm memory only grows: without a replacement, the memory that
//! thousands of SAs once took stayed taken after they were all deleted.
//! Emptied, an instance that grew past [`group::RECLAIM_GROWN`] is
//! replaced by a fresh one; one that grew less is kept. One that still
//! holds SAs is replaced by one with those SAs once they are at most an
//! eighth of its peak ([`group::COMPACT_FRACTION`]), with their state.

use super::install_tests::{add_inbound, add_outbound, udp_to_net, wired_loop};
use super::*;
use crate::wasm::esp::{EncapVerdict, SaLimits};

/// Install inbound SAs from SPI 0x10000 on until group 0's instance grew
/// by `grown` bytes (at most `most` of them): their keys.
fn grow(l: &mut Loop, ks: &Keystore, to_loop: &Sender<SaCommand>, grown: usize, most: u32) -> Vec<(u32, u64)> {
    let mut sas = Vec::new();
    for spi in 0x10000..0x10000 + most {
        let (key, add) = add_inbound(ks, spi, spi as u8, 0);
        assert!(to_loop.send(add));
        sas.push((spi, key));
        // In steps, as the control thread's commands come.
        if sas.len() % 256 == 0 {
            l.apply_commands(true);
            if memory_grown(l) >= grown {
                break;
            }
        }
    }
    l.apply_commands(true);
    assert_eq!(l.groups.by_spi.len(), sas.len(), "every SA installed");
    sas
}

fn memory_grown(l: &Loop) -> usize {
    l.groups.list[0].inst.as_ref().expect("the daemon's domain keeps an instance").memory_grown()
}

fn remove(l: &mut Loop, to_loop: &Sender<SaCommand>, sas: &[(u32, u64)]) {
    for &(spi, key) in sas {
        assert!(to_loop.send(SaCommand::RemoveInbound { spi, key }));
    }
    l.apply_commands(true);
}

#[test]
fn an_emptied_instance_that_grew_is_replaced_by_a_fresh_one() {
    let (mut l, ks, to_loop, reports) = wired_loop();
    let sas = grow(&mut l, &ks, &to_loop, group::RECLAIM_GROWN, 60_000);
    let grown = memory_grown(&l);
    assert!(grown >= group::RECLAIM_GROWN, "{} SAs grew the guest by {grown} bytes only", sas.len());
    // All gone in one drain of the thread's commands: the instance is
    // looked at once after it, empty, and replaced by a fresh one.
    remove(&mut l, &to_loop, &sas);
    assert!(l.groups.by_spi.is_empty());
    assert_eq!(memory_grown(&l), 0, "the emptied instance was replaced");
    assert_eq!(l.stats.guest_restarts.load(std::sync::atomic::Ordering::Relaxed), 0, "not counted as a fault");
    assert!(reports.drain().is_empty(), "nothing reported up");
    // The fresh instance takes SAs and carries packets.
    let (_, add) = add_outbound(&ks, (0x7001, 0x7001), 1, 9, SaLimits::default());
    assert!(to_loop.send(add));
    l.apply_commands(true);
    let inst = l.groups.list[0].inst.as_mut().expect("instance");
    inst.store.data_mut().batch = vec![udp_to_net(1)];
    assert!(matches!(inst.encap(1).expect("no trap")[..], [EncapVerdict::Send(_)]));
}

#[test]
fn an_emptied_instance_that_grew_little_is_kept() {
    let (mut l, ks, to_loop, _reports) = wired_loop();
    let sas = grow(&mut l, &ks, &to_loop, 1, 256);
    let grown = memory_grown(&l);
    assert!(grown > 0 && grown < group::RECLAIM_GROWN, "256 SAs grew the guest by {grown} bytes");
    remove(&mut l, &to_loop, &sas);
    assert_eq!(memory_grown(&l), grown, "not worth an instantiation: kept");
}

#[test]
fn an_instance_left_with_an_eighth_of_its_peak_is_replaced_with_those_sas() {
    let (mut l, ks, to_loop, reports) = wired_loop();
    let sas = grow(&mut l, &ks, &to_loop, group::RECLAIM_GROWN, 60_000);
    let (grown, peak) = (memory_grown(&l), sas.len());
    assert!(grown >= group::RECLAIM_GROWN);
    // The first SA received up to 1,000 (the host's high-water mark,
    // noted once per run of opened packets), and 998 and 999 not yet.
    let (first_spi, first_key) = sas[0];
    ks.get(first_key).expect("key").note_opened(1_000, !0b110);
    // Down to one more than an eighth: still the old instance.
    let keep = peak / group::COMPACT_FRACTION;
    remove(&mut l, &to_loop, &sas[keep + 1..]);
    assert_eq!(memory_grown(&l), grown, "more than an eighth left: kept");
    // One more gone: replaced by an instance with the eighth.
    remove(&mut l, &to_loop, &sas[keep..keep + 1]);
    let now = memory_grown(&l);
    assert!(now < grown / 4, "{keep} of {peak} SAs left: grown {now} bytes, was {grown}");
    assert_eq!(l.groups.list[0].peak, keep, "the new instance's peak is what it got");
    let inst = l.groups.list[0].inst.as_mut().expect("instance");
    let states = inst.sa_states().expect("states");
    assert_eq!(states.len(), keep, "every SA left is in the new instance");
    let first = states.iter().find(|s| s.spi == first_spi).expect("the first SA");
    assert_eq!(first.seq, 1_000, "its replay window starts at the host's high-water mark");
    assert_eq!(l.stats.guest_restarts.load(std::sync::atomic::Ordering::Relaxed), 0, "not counted as a fault");
    assert!(reports.drain().is_empty(), "nothing reported up");
    // The rest going does not replace it again: it grew too little.
    remove(&mut l, &to_loop, &sas[..keep]);
    assert_eq!(memory_grown(&l), now);
}

#[test]
fn sas_whose_keys_are_gone_are_left_out_of_the_new_instance() {
    let (mut l, ks, to_loop, _reports) = wired_loop();
    let sas = grow(&mut l, &ks, &to_loop, group::RECLAIM_GROWN, 60_000);
    let keep = sas.len() / group::COMPACT_FRACTION;
    // The control thread deleted the first ten of those that will be
    // left: their keys are destroyed, their removals still queued.
    for &(_, key) in &sas[..10] {
        assert!(ks.remove(key));
    }
    remove(&mut l, &to_loop, &sas[keep..]);
    let inst = l.groups.list[0].inst.as_mut().expect("instance");
    assert_eq!(inst.sa_states().expect("states").len(), keep - 10, "replaced, without the deleted ten");
    // Their removals come: recorded here, not in the guest, no error.
    remove(&mut l, &to_loop, &sas[..10]);
    assert_eq!(l.groups.list[0].sas.len(), keep - 10);
    assert_eq!(l.stats.guest_restarts.load(std::sync::atomic::Ordering::Relaxed), 0);
}
