//! The daemon's own domain keeps its ESP instances while they hold no SA,
//! and a wasm memory only grows: without a replacement, the memory that
//! thousands of SAs once took stayed taken after they were all deleted.
//! Emptied, an instance that grew past [`group::RECLAIM_GROWN`] is
//! replaced by a fresh one; one that grew less is kept. One that still
//! holds SAs is replaced by one with those SAs once they are at most an
//! eighth of its peak ([`group::COMPACT_FRACTION`]), with their state,
//! filled in slices while the old one carries on ([`super::rebuild`]);
//! what changes meanwhile is carried over.

use super::install_tests::{add_inbound, add_outbound, udp_to_net, wired_loop};
use super::*;
use crate::wasm::esp::{EncapVerdict, SaLimits};

/// Install inbound SAs from SPI 0x10000 on until group 0's instance grew
/// by `grown` bytes (at most `most` of them): their keys.
fn grow(l: &mut Loop, ks: &Keystore, to_loop: &Sender<SaCommand>, grown: usize, most: u32) -> Vec<(u32, u64)> {
    grow_with(l, to_loop, grown, most, |spi| add_inbound(ks, spi, spi as u8, 0))
}

/// The same with outbound SAs, to 10.0.n.0/24 for n from 1 to 250 in turn.
fn grow_outbound(l: &mut Loop, ks: &Keystore, to_loop: &Sender<SaCommand>, grown: usize) -> Vec<(u32, u64)> {
    grow_with(l, to_loop, grown, 60_000, |spi| {
        add_outbound(ks, (spi, spi), (spi % 250 + 1) as u8, spi as u8, SaLimits::default())
    })
}

fn grow_with(
    l: &mut Loop,
    to_loop: &Sender<SaCommand>,
    grown: usize,
    most: u32,
    add: impl Fn(u32) -> (u64, SaCommand),
) -> Vec<(u32, u64)> {
    let mut sas = Vec::new();
    for spi in 0x10000..0x10000 + most {
        let (key, add) = add(spi);
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

fn remove_outbound(l: &mut Loop, to_loop: &Sender<SaCommand>, sas: &[(u32, u64)]) {
    for &(spi, key) in sas {
        assert!(to_loop.send(SaCommand::RemoveOutbound { spi, key }));
    }
    l.apply_commands(true);
}

/// Turn the loop until group 0's rebuild is over, as the data-path
/// threads do between batches (`Loop::advance_rebuilds`): the turns it
/// took (at least one; the old instance serves until the last), and what
/// it gave back.
fn finish_rebuild(l: &mut Loop) -> (u32, group::Reclaimed) {
    assert!(l.rebuilding(), "a rebuild is going");
    for turns in 1..100_000 {
        let ended = l.advance_rebuilds();
        if let Some((g, done)) = ended.into_iter().next() {
            assert_eq!(g, 0);
            assert!(l.groups.list[0].rebuild.is_none());
            assert!(!l.rebuilding(), "the loop may sleep again");
            return (turns, done);
        }
        assert!(l.groups.list[0].rebuild.is_some(), "going on, or ended with an error");
    }
    panic!("the rebuild did not end");
}

/// One turn of group 0's rebuild that stages exactly 16 SAs (the clock
/// is read every 16), whatever the machine's speed.
fn first_turn(l: &mut Loop) {
    let rt = l.runtime.clone();
    assert!(l.groups.list[0].advance_rebuild(&rt, std::time::Duration::ZERO).expect("no trap").is_none());
}

fn rebuild(l: &Loop) -> &rebuild::Rebuild {
    l.groups.list[0].rebuild.as_ref().expect("a rebuild is going")
}

/// The state group 0's instance has for `spi` (outbound or inbound).
fn state_of(l: &mut Loop, spi: u32) -> Option<crate::wasm::esp::SaState> {
    let inst = l.groups.list[0].inst.as_mut().expect("instance");
    inst.sa_states().expect("states").into_iter().find(|s| s.spi == spi)
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
    // One more gone: a new instance is filled with the eighth, in more
    // than one turn of the loop, while the old one serves.
    remove(&mut l, &to_loop, &sas[keep..keep + 1]);
    assert_eq!(memory_grown(&l), grown, "the old instance serves while the new one is filled");
    let (turns, done) = finish_rebuild(&mut l);
    assert!(turns >= 2 && done.turns as usize == turns as usize, "{keep} SAs staged in {turns} turns");
    assert_eq!((done.held, done.peak, done.redone), (keep, peak, false));
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
    finish_rebuild(&mut l);
    let inst = l.groups.list[0].inst.as_mut().expect("instance");
    assert_eq!(inst.sa_states().expect("states").len(), keep - 10, "replaced, without the deleted ten");
    // Their removals come: recorded here, not in the guest, no error.
    remove(&mut l, &to_loop, &sas[..10]);
    assert_eq!(l.groups.list[0].sas.len(), keep - 10);
    assert_eq!(l.stats.guest_restarts.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// ESP packet `seq` of inbound SA `spi` whose key is `fill` bytes (as
/// `add_inbound` makes it), carrying a UDP packet within 10.0.0.0/24.
fn esp_packet(spi: u32, fill: u8, seq: u32) -> PacketBuf {
    use crate::keys::{EspAlgorithm, EspKey};
    let alg = EspAlgorithm::Aes256Gcm16;
    let key = EspKey::new(alg, zeroize::Zeroizing::new(vec![fill; alg.keymat_len()])).expect("key");
    let mut p = udp_to_net(0);
    let pad = wasmsec_wire::esp::Trailer::pad_length_for(p.len(), alg.pad_align());
    let header = wasmsec_wire::esp::Repr { spi, sequence_number: seq };
    key.seal_at(&mut p, &header, None, (pad, 4), u64::from(seq)).expect("sealed");
    p
}

/// What group 0's instance does with ESP packet `seq` of inbound SA
/// `spi` (key of `fill` bytes): delivered, or why not.
fn decap_one(l: &mut Loop, spi: u32, fill: u8, seq: u32) -> crate::wasm::esp::DecapVerdict {
    let inst = l.groups.list[0].inst.as_mut().expect("instance");
    inst.store.data_mut().batch = vec![esp_packet(spi, fill, seq)];
    inst.decap(1).expect("no trap")[0]
}

fn delivered(v: crate::wasm::esp::DecapVerdict) -> bool {
    matches!(v, crate::wasm::esp::DecapVerdict::Deliver(_))
}

#[test]
fn what_happens_to_inbound_sas_while_a_rebuild_goes_is_carried_over() {
    let (mut l, ks, to_loop, reports) = wired_loop();
    let sas = grow(&mut l, &ks, &to_loop, group::RECLAIM_GROWN, 60_000);
    let keep = sas.len() / group::COMPACT_FRACTION;
    // The first SA received up to 700 but 697 and 695 (its key of 0 bytes).
    let (first_spi, first_key) = sas[0];
    let first = ks.get(first_key).expect("key");
    first.note_opened(700, !(1 << 3 | 1 << 5));
    remove(&mut l, &to_loop, &sas[keep..]);
    first_turn(&mut l);
    assert!(rebuild(&l).is_staged(Direction::Inbound, first_spi, first_key), "staged first");
    // Then the old instance opens 697 (the host notes it): below the
    // edge only, the staged copy is behind.
    first.note_opened(700, 1 << 3);
    // The second SA, staged, and the one before the last, not yet, are
    // removed; the third, staged, and the last, not yet, are removed and
    // their SPIs installed again with other keys; a new SA comes.
    let (gone_staged, gone_later) = (sas[1], sas[keep - 2]);
    let (again_staged, again_later) = (sas[2], sas[keep - 1]);
    for (spi, key) in [gone_staged, again_staged] {
        assert!(rebuild(&l).is_staged(Direction::Inbound, spi, key));
    }
    for (spi, key) in [gone_later, again_later] {
        assert!(!rebuild(&l).is_staged(Direction::Inbound, spi, key), "not staged yet");
    }
    remove(&mut l, &to_loop, &[gone_staged, gone_later, again_staged, again_later]);
    let grants = &rebuild(&l).inst.store.data().keys;
    assert!(grants.get(gone_staged.1).is_err() && grants.get(again_staged.1).is_err(), "their keys' grants revoked");
    for (spi, fill) in [(again_staged.0, 0x71), (again_later.0, 0x72), (0x9_0000, 9)] {
        let (_, add) = add_inbound(&ks, spi, fill, 0);
        assert!(to_loop.send(add));
    }
    l.apply_commands(true);
    assert!(l.rebuilding(), "still going");
    let (_, done) = finish_rebuild(&mut l);
    assert!(!done.redone, "carried over, not made again at once");
    assert_eq!(l.groups.list[0].sas.len(), keep - 1);
    let inst = l.groups.list[0].inst.as_mut().expect("instance");
    let states = inst.sa_states().expect("states");
    assert_eq!(states.len(), keep - 1, "the SAs the group holds, no more, no fewer");
    assert!(!states.iter().any(|s| s.spi == gone_staged.0 || s.spi == gone_later.0), "the removed SAs are gone");
    assert_eq!(states.iter().find(|s| s.spi == first_spi).map(|s| s.seq), Some(700));
    // Packets through the new instance: 697, which the old one opened
    // after the first SA was staged, is a replay; 695 arrives once.
    assert!(!delivered(decap_one(&mut l, first_spi, 0, 697)), "697 again: a replay");
    assert!(!delivered(decap_one(&mut l, first_spi, 0, 700)), "700 again: a replay");
    assert!(delivered(decap_one(&mut l, first_spi, 0, 695)), "695 arrives once");
    assert!(!delivered(decap_one(&mut l, first_spi, 0, 695)));
    assert!(delivered(decap_one(&mut l, first_spi, 0, 701)));
    // The SPIs installed again carry their new keys' packets, the new SA
    // its own.
    for (spi, fill) in [(again_staged.0, 0x71), (again_later.0, 0x72), (0x9_0000, 9)] {
        assert!(delivered(decap_one(&mut l, spi, fill, 1)), "{spi:#x}");
    }
    assert!(!delivered(decap_one(&mut l, again_staged.0, again_staged.0 as u8, 2)), "not the old key's");
    assert!(reports.drain().is_empty(), "nothing reported up");
    assert_eq!(l.stats.guest_restarts.load(std::sync::atomic::Ordering::Relaxed), 0, "not counted as a fault");
}

#[test]
fn a_replaced_instance_ends_the_rebuild() {
    let (mut l, ks, to_loop, _reports) = wired_loop();
    let sas = grow(&mut l, &ks, &to_loop, group::RECLAIM_GROWN, 60_000);
    let keep = sas.len() / group::COMPACT_FRACTION;
    remove(&mut l, &to_loop, &sas[keep..]);
    assert!(l.rebuilding());
    // As after a trap: the replacement gets the SAs at once.
    l.replace(0, Direction::Inbound);
    assert!(l.groups.list[0].rebuild.is_none(), "the rebuild is dropped");
    // The flag lags by one turn of the loop, which finds none going.
    assert!(l.advance_rebuilds().is_empty());
    assert!(!l.rebuilding());
    assert_eq!(state_of(&mut l, sas[0].0).map(|s| s.spi), Some(sas[0].0));
    assert!(memory_grown(&l) < group::RECLAIM_GROWN);
}

/// Outbound SAs that grew group 0's instance, seven eighths of them
/// removed and the first 16 of the rest staged: the SAs and how many are
/// left.
fn outbound_rebuild_going(l: &mut Loop, ks: &Keystore, to_loop: &Sender<SaCommand>) -> (Vec<(u32, u64)>, usize) {
    let sas = grow_outbound(l, ks, to_loop, group::RECLAIM_GROWN);
    let keep = sas.len() / group::COMPACT_FRACTION;
    remove_outbound(l, to_loop, &sas[keep..]);
    first_turn(l);
    assert!(rebuild(l).is_staged(Direction::Outbound, sas[0].0, sas[0].1));
    (sas, keep)
}

#[test]
fn an_outbound_sa_sealing_while_a_rebuild_goes_sends_no_number_twice_and_the_newest_sa_still_wins() {
    let (mut l, ks, to_loop, _reports) = wired_loop();
    let (sas, keep) = outbound_rebuild_going(&mut l, &ks, &to_loop);
    assert!(keep > 16, "the last SA is not staged in the first turn");
    let (first_spi, first_key) = sas[0];
    // The old instance seals 1,000 packets of the first SA meanwhile.
    let key = ks.get(first_key).expect("key");
    let sealed = key.highest_seq() + 1_000;
    key.note_seq(sealed);
    // A rekey's new SA for the destination of the last SA, not staged yet
    // (its net, 10.0.n.0/24, is no other SA's left): installed later, it
    // takes that traffic, as in the old instance.
    let (last_spi, last_key) = sas[keep - 1];
    assert!(!rebuild(&l).is_staged(Direction::Outbound, last_spi, last_key));
    let net = (last_spi % 250 + 1) as u8;
    let (_, add) = add_outbound(&ks, (0x9_0000, 0x9_0000), net, 9, SaLimits::default());
    assert!(to_loop.send(add));
    l.apply_commands(true);
    let (_, done) = finish_rebuild(&mut l);
    assert!(done.turns >= 2 && !done.redone);
    let first = state_of(&mut l, first_spi).expect("the first SA");
    assert!(first.seq > sealed, "next number {} after {sealed} sealed", first.seq);
    assert_eq!(first.seq, 1 + rebuild::SEQ_SKIP, "staged past its skip, not made again");
    let inst = l.groups.list[0].inst.as_mut().expect("instance");
    inst.store.data_mut().batch = vec![udp_to_net(net)];
    assert!(matches!(inst.encap(1).expect("no trap")[..], [EncapVerdict::Send(_)]));
    assert_eq!(state_of(&mut l, 0x9_0000).expect("the new SA").packets, 1, "the newest SA took the packet");
    assert_eq!(state_of(&mut l, last_spi).expect("the last SA").packets, 0);
}

#[test]
fn an_outbound_sa_sealing_past_its_skip_makes_the_instance_at_once() {
    let (mut l, ks, to_loop, _reports) = wired_loop();
    let (sas, keep) = outbound_rebuild_going(&mut l, &ks, &to_loop);
    let (first_spi, first_key) = sas[0];
    let sealed = rebuild::SEQ_SKIP + 5;
    ks.get(first_key).expect("key").note_seq(sealed);
    let (_, done) = finish_rebuild(&mut l);
    assert_eq!((done.held, done.redone), (keep, true));
    assert_eq!(state_of(&mut l, first_spi).expect("the first SA").seq, sealed + 1, "made again from the key");
    assert!(memory_grown(&l) < group::RECLAIM_GROWN);
}

#[test]
fn a_key_destroyed_after_staging_while_its_removal_waits_is_still_caught_up() {
    let (mut l, ks, to_loop, _reports) = wired_loop();
    let sas = grow(&mut l, &ks, &to_loop, group::RECLAIM_GROWN, 60_000);
    let keep = sas.len() / group::COMPACT_FRACTION;
    let (first_spi, first_key) = sas[0];
    ks.get(first_key).expect("key").note_opened(700, !(1 << 3));
    remove(&mut l, &to_loop, &sas[keep..]);
    first_turn(&mut l);
    assert!(rebuild(&l).is_staged(Direction::Inbound, first_spi, first_key));
    // The old instance opens 697; then the control thread deletes the SA
    // and destroys its key, and the removal waits in the queue.
    ks.get(first_key).expect("key").note_opened(700, 1 << 3);
    assert!(ks.remove(first_key));
    let (_, done) = finish_rebuild(&mut l);
    assert!(!done.redone);
    // Until the removal comes the new instance serves the SA with the
    // key it was granted: 697 is a replay there too.
    assert!(!delivered(decap_one(&mut l, first_spi, 0, 697)), "697 again: a replay");
    assert!(delivered(decap_one(&mut l, first_spi, 0, 701)));
    remove(&mut l, &to_loop, &sas[..1]);
    assert!(state_of(&mut l, first_spi).is_none());
}

#[test]
fn an_outbound_key_destroyed_after_staging_that_sealed_past_its_skip_makes_the_instance_at_once() {
    let (mut l, ks, to_loop, _reports) = wired_loop();
    let (sas, _) = outbound_rebuild_going(&mut l, &ks, &to_loop);
    let (first_spi, first_key) = sas[0];
    ks.get(first_key).expect("key").note_seq(rebuild::SEQ_SKIP + 5);
    assert!(ks.remove(first_key));
    let (_, done) = finish_rebuild(&mut l);
    assert!(done.redone, "the staged copy would send numbers again: made at once");
    assert!(state_of(&mut l, first_spi).is_none(), "made without the SA whose key is gone");
}
