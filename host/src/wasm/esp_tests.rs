//! The ESP guest's host state: sealing and opening runs, the sandbox
//! checks on them, and the verdicts.
use std::sync::Arc;

use zeroize::Zeroizing;

use super::*;
use crate::keys::{Authenticated, EspAlgorithm, EspKey};

/// The SPI on the wire, both ways (the peer's for sealing).
const SPI: u32 = 0x7001;
/// The host's name of the outbound SA (its CHILD SA's inbound SPI).
const NAME: u32 = 0x0b0b;

/// A store's host state with `n` 60-byte packets and a sealing key
/// (handle 1, SA `NAME` on the wire as `SPI`, peer 4) and an opening
/// one (handle 2, `SPI`).
fn state(n: usize) -> GuestState {
    state_with(n, EspAlgorithm::Aes256Gcm16)
}

/// A key of `alg` with the tests' keying material (the same for every
/// key, so one seals what another opens).
fn key_of(alg: EspAlgorithm) -> Arc<EspKey> {
    Arc::new(EspKey::new(alg, Zeroizing::new(vec![9; alg.keymat_len()])).unwrap())
}

/// A new AES-256-GCM key granted as handle 2 to open SA `SPI` with
/// anti-replay window `window`.
fn grant_open(st: &mut GuestState, window: u32) -> Arc<EspKey> {
    let k = key_of(EspAlgorithm::Aes256Gcm16);
    st.keys.grant(2, k.clone(), KeyUse::Open { spi: SPI, replay_window: window }, SaLimits::default());
    k
}

fn state_with(n: usize, alg: EspAlgorithm) -> GuestState {
    let key = || key_of(alg);
    let mut keys = KeyTable::default();
    keys.grant(1, key(), KeyUse::Seal { spi: NAME, wire_spi: SPI, peer: 4 }, SaLimits::default());
    keys.grant(2, key(), KeyUse::Open { spi: SPI, replay_window: 1024 }, SaLimits::default());
    let batch = (0..n)
        .map(|_| {
            let mut p = PacketBuf::new();
            p.recv_area()[..60].fill(0x45);
            p.set_received(60);
            p
        })
        .collect();
    let mut st = GuestState { keys, batch, ..GuestState::new(None) };
    st.lend(n);
    st
}

/// One seal run of `packets` with sealing key 1.
fn run(first_seq: u64, esn: bool, packets: Vec<u32>) -> SealRuns {
    let n = packets.len();
    let run = SealRun { key: 1, spi: NAME, first_seq, esn, count: n as u32 };
    SealRuns { runs: vec![run], packets, pad_lengths: vec![2; n], next_headers: vec![4; n] }
}

/// One open run of `packets` with key `key`, ESN if `esn_highs` is not empty.
fn open_run(key: u64, packets: Vec<u32>, esn_highs: Vec<u32>) -> OpenRuns {
    let run = OpenRun { key, esn: !esn_highs.is_empty(), count: packets.len() as u32 };
    OpenRuns { runs: vec![run], packets, esn_highs }
}

#[test]
fn a_pad_that_breaks_the_cbc_block_is_held_against_the_guest() {
    let cbc = EspAlgorithm::AesCbc { key_bits: 128, integ: crate::keys::Integ::Sha256_128 };
    // 60 bytes, the pad and the 2 trailer bytes: a pad of 2 ends on a
    // 16-byte block, one of 14 does not.
    let mut st = state_with(2, cbc);
    let mut r = run(1, false, vec![0, 1]);
    r.pad_lengths = vec![2, 14];
    let failed = st.seal(Resource::new_borrow(0), r);
    assert_eq!(failed.iter().map(|f| (f.packet, f.error)).collect::<Vec<_>>(), [(1, WitCryptoError::BadLength)]);
    assert_eq!(st.refusals, 1, "the guest chose the pad");
    assert_eq!(st.marks[0], Mark::Sealed { peer: 4, spi: NAME });
}

#[test]
fn past_its_hard_limit_a_key_seals_nothing_and_the_guest_is_not_blamed() {
    let mut st = state(5);
    let limits = SaLimits { hard_packets: 3, ..SaLimits::default() };
    let k = key_of(EspAlgorithm::Aes256Gcm16);
    st.keys.grant(1, k.clone(), KeyUse::Seal { spi: NAME, wire_spi: SPI, peer: 4 }, limits);
    assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1])).is_empty());
    assert!(st.limits_reached.is_empty());
    st.lend(5);
    // A replaced guest, say, that knows nothing of the first two.
    let failed = st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1, 2]));
    assert_eq!(
        failed.iter().map(|f| (f.packet, f.error)).collect::<Vec<_>>(),
        [(1, WitCryptoError::KeyExpired), (2, WitCryptoError::KeyExpired)]
    );
    assert_eq!(st.refusals, 0, "the SA's end, not the guest's lie");
    assert_eq!(st.marks[..3], [Mark::Sealed { peer: 4, spi: NAME }, Mark::Untouched, Mark::Untouched]);
    assert_eq!(k.usage().get().0, 3);
    let reached = LimitReached { key: 1, spi: NAME, outbound: true, hard: true, by_bytes: false };
    assert_eq!(st.limits_reached, [reached]);
}

#[test]
fn a_run_with_lists_of_other_lengths_is_refused_whole() {
    let mut st = state(3);
    let mut bad = run(1, false, vec![0, 1, 2]);
    bad.next_headers.pop();
    let failed = st.seal(Resource::new_borrow(0), bad);
    assert_eq!(failed.iter().map(|f| f.packet).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(failed.iter().all(|f| f.error == WitCryptoError::BadLength));
    assert_eq!((st.refusals, st.marks.clone()), (3, vec![Mark::Untouched; 3]));
}

#[test]
fn runs_take_their_packets_from_the_flat_lists_in_turn() {
    let mut st = state(3);
    let mut runs = run(1, false, vec![2, 0, 1]);
    runs.runs = vec![
        SealRun { key: 1, spi: NAME, first_seq: 7, esn: false, count: 1 },
        SealRun { key: 1, spi: NAME, first_seq: 20, esn: false, count: 2 },
    ];
    runs.pad_lengths = vec![2, 6, 10];
    assert!(st.seal(Resource::new_borrow(0), runs).is_empty());
    // Packet 2 is the first run's (sequence number 7), packets 0 and 1
    // the second's (20 and 21), each with its own pad length.
    let seq = |i: usize| st.batch[i].data()[7];
    assert_eq!([seq(2), seq(0), seq(1)], [7, 20, 21]);
    let lens: Vec<usize> = st.batch.iter().map(PacketBuf::len).collect();
    assert_eq!([lens[0] - lens[2], lens[1] - lens[2]], [4, 8]);
    st.lend(3);
    let mut open = open_run(2, vec![0, 1, 2], vec![]);
    open.runs = vec![OpenRun { key: 2, esn: false, count: 1 }, OpenRun { key: 2, esn: false, count: 2 }];
    let opened = st.open(Resource::new_borrow(0), open);
    assert!(opened.failures.is_empty(), "{:?}", opened.failures);
    assert_eq!(opened.pad_lengths, [6, 10, 2]);
}

#[test]
fn runs_whose_counts_do_not_add_up_to_the_lists_are_refused_whole() {
    for counts in [vec![1, 1], vec![2, 2], vec![u32::MAX, 4]] {
        let mut st = state(3);
        let mut runs = run(1, false, vec![0, 1, 2]);
        runs.runs = counts.iter().map(|&count| SealRun { count, ..runs.runs[0] }).collect();
        let failed = st.seal(Resource::new_borrow(0), runs);
        assert_eq!(failed.iter().map(|f| f.packet).collect::<Vec<_>>(), [0, 1, 2], "counts {counts:?}");
        assert!(failed.iter().all(|f| f.error == WitCryptoError::BadLength));
        assert_eq!((st.refusals, st.marks.clone()), (3, vec![Mark::Untouched; 3]));
    }
    let mut st = state(2);
    assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1])).is_empty());
    st.lend(2);
    let mut open = open_run(2, vec![0, 1], vec![]);
    open.runs[0].count = 1;
    let opened = st.open(Resource::new_borrow(0), open);
    assert_eq!(opened.failures.iter().map(|f| f.packet).collect::<Vec<_>>(), [0, 1]);
    assert_eq!((opened.pad_lengths, opened.next_headers), (vec![0, 0], vec![0, 0]));
    assert_eq!((st.refusals, st.marks.clone()), (2, vec![Mark::Untouched; 2]));
}

#[test]
fn without_esn_a_run_stops_at_the_last_32_bit_sequence_number() {
    let mut st = state(3);
    let failed = st.seal(Resource::new_borrow(0), run(u64::from(u32::MAX) - 1, false, vec![0, 1, 2]));
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].packet, failed[0].error), (2, WitCryptoError::BadLength));
    assert_eq!(st.marks[..2], [Mark::Sealed { peer: 4, spi: NAME }; 2]);
    // The high bits go into the ICV only, the low ones into the header,
    // after the peer's SPI (not the name the guest sealed under).
    let mut st = state(1);
    assert!(st.seal(Resource::new_borrow(0), run(5 << 32 | 9, true, vec![0])).is_empty());
    assert_eq!(st.batch[0].data()[..8], [0, 0, 0x70, 0x01, 0, 0, 0, 9]);
}

#[test]
fn a_packet_named_twice_or_out_of_the_batch_is_refused_and_the_wrong_key_seals_nothing() {
    let mut st = state(2);
    let failed = st.seal(Resource::new_borrow(0), run(1, false, vec![1, 1, 7]));
    assert_eq!(failed.iter().map(|f| f.packet).collect::<Vec<_>>(), [1, 7]);
    assert_eq!(st.marks, [Mark::Untouched, Mark::Sealed { peer: 4, spi: NAME }]);
    // The opening key cannot seal; the sealing key cannot open.
    let mut st = state(1);
    let mut wrong = run(1, false, vec![0]);
    wrong.runs[0].key = 2;
    let failed = st.seal(Resource::new_borrow(0), wrong);
    assert_eq!(failed[0].error, WitCryptoError::WrongKeyKind);
    // A key seals only for the SA it was granted to, named as the host
    // named it: not under its SPI on the wire, nor another SA's name.
    for spi in [SPI, NAME + 1] {
        let mut st = state(1);
        let mut other = run(1, false, vec![0]);
        other.runs[0].spi = spi;
        let failed = st.seal(Resource::new_borrow(0), other);
        assert_eq!(failed[0].error, WitCryptoError::WrongKeyKind, "sealed under {spi:#x}");
        assert_eq!(st.marks, [Mark::Untouched]);
    }
    let opened = st.open(Resource::new_borrow(0), open_run(1, vec![0], vec![]));
    assert_eq!(opened.failures.len(), 1);
    assert_eq!(Heads::from_flat(opened.heads, IP_HEAD_LEN).get(0).map(|h| h.0), Some(st.batch[0].len()));
    assert_eq!(st.marks, [Mark::Untouched]);
}

#[test]
fn a_sealed_run_opens_with_one_entry_per_packet() {
    let mut st = state(2);
    assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1])).is_empty());
    st.lend(2);
    let mut one_word = open_run(2, vec![0, 1], vec![0]);
    one_word.runs[0].esn = true;
    let opened = st.open(Resource::new_borrow(0), one_word);
    assert_eq!(opened.failures[0].error, WitCryptoError::BadLength, "one ESN word for two packets");
    assert_eq!((opened.pad_lengths.len(), opened.next_headers.len()), (2, 2), "an entry per packet named");
    st.lend(2);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![1, 0], vec![]));
    assert!(opened.failures.is_empty(), "{:?}", opened.failures);
    // 60 bytes, 2 of padding and the two trailer bytes.
    let heads = Heads::from_flat(opened.heads, IP_HEAD_LEN);
    assert_eq!([0, 1].map(|i| heads.get(i).map(|h| h.0)), [Some(64); 2]);
    assert_eq!((opened.pad_lengths, opened.next_headers), (vec![2, 2], vec![4, 4]));
}

#[test]
fn a_packet_that_does_not_open_is_failed_but_not_held_against_the_guest() {
    let mut st = state(3);
    assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1, 2])).is_empty());
    // Packet 0 damaged (as a forger's would be: the right SPI, a bad
    // ICV), packet 1 cut short, packet 2 intact.
    let last = st.batch[0].len() - 1;
    st.batch[0].data_mut()[last] ^= 1;
    st.batch[1].truncate(12);
    st.lend(3);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1, 2], vec![]));
    let failed: Vec<_> = opened.failures.iter().map(|f| (f.packet, f.error)).collect();
    assert_eq!(failed, [(0, WitCryptoError::IntegrityFailed), (1, WitCryptoError::BadLength)]);
    assert_eq!(st.refusals, 0, "the packets' failures are no protocol errors of the guest");
    assert!(matches!(st.marks[2], Mark::Opened { .. }));
    // What the guest asks wrongly still counts: packet 2 again, and one
    // out of the batch.
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![2, 9], vec![]));
    assert_eq!(opened.failures.len(), 2);
    assert_eq!(st.refusals, 2);
}

/// RFC 4303 section 3.4.3 on the host's side: whatever the guest's
/// window says, a number the key authenticated is not opened again,
/// whether in an earlier call or earlier in the same run; and that is
/// the packet's failure (an honest guest asks for both copies of a
/// number replayed within a batch), not the guest's.
#[test]
fn a_number_its_key_authenticated_is_not_opened_again() {
    let mut st = state(3);
    let k = grant_open(&mut st, 1024);
    assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1, 2])).is_empty());
    let sealed = st.batch.clone();
    st.lend(3);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1], vec![]));
    assert!(opened.failures.is_empty(), "{:?}", opened.failures);
    // Numbers 1 (opened before), 3 (new) and 3 again.
    st.batch = vec![sealed[0].clone(), sealed[2].clone(), sealed[2].clone()];
    st.lend(3);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1, 2], vec![]));
    let failed: Vec<_> = opened.failures.iter().map(|f| (f.packet, f.error)).collect();
    assert_eq!(failed, [(0, WitCryptoError::Replayed), (2, WitCryptoError::Replayed)]);
    assert!(matches!(st.marks[1], Mark::Opened { .. }));
    assert_eq!((&st.marks[0], &st.marks[2]), (&Mark::Replayed, &Mark::Replayed));
    assert_eq!(st.batch[0].data(), sealed[0].data(), "not opened");
    assert_eq!((st.replays_refused, st.refusals), (2, 0));
    // Number 1 the guest's window held before the call; the second 3 it
    // could not know of (its window commits after the open).
    assert_eq!(st.replays_missed, 1);
    assert_eq!(st.keys.get(2).unwrap().0.authenticated(), Authenticated { top: 3, bits: 0b111 });
    // Number 2 in a later call, as a guest whose window forgot it.
    st.batch = vec![sealed[1].clone()];
    st.lend(1);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0], vec![]));
    assert_eq!(opened.failures.iter().map(|f| f.error).collect::<Vec<_>>(), [WitCryptoError::Replayed]);
    assert_eq!((st.replays_refused, st.replays_missed), (3, 2));
    // Asking again for a packet refused so is the guest's error, and
    // one packet is not counted as many replays.
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0], vec![]));
    assert_eq!(opened.failures.iter().map(|f| f.error).collect::<Vec<_>>(), [WitCryptoError::BadLength]);
    assert_eq!((st.replays_refused, st.refusals), (3, 1));
    // With the SA's anti-replay off, the host takes it again too.
    st.keys.grant(2, k, KeyUse::Open { spi: SPI, replay_window: 0 }, SaLimits::default());
    st.batch = vec![sealed[1].clone(), sealed[1].clone()];
    st.lend(2);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1], vec![]));
    assert!(opened.failures.is_empty(), "{:?}", opened.failures);
    assert_eq!((st.replays_refused, st.replays_missed), (3, 2));
}

/// Left of the SA's window (RFC 4303 section 3.4.3: `replay_window` or
/// more below the highest number authenticated, by the key before or
/// earlier in the run) nothing is opened, whatever the guest's window
/// says; within it, more than 63 below, the guest's window decides.
#[test]
fn a_number_left_of_the_sas_window_is_not_opened() {
    let mut st = state(5);
    let k = grant_open(&mut st, 100);
    for (seq, packet) in [(1, 0), (100, 1), (101, 2), (120, 3), (200, 4)] {
        assert!(st.seal(Resource::new_borrow(0), run(seq, false, vec![packet])).is_empty());
    }
    let sealed = st.batch.clone();
    // 200 first: 1 and 100 are then left of the window, 101 and 120 not.
    let open_all = |st: &mut GuestState, window| {
        st.keys.grant(2, k.clone(), KeyUse::Open { spi: SPI, replay_window: window }, SaLimits::default());
        st.batch = [4, 0, 1, 2, 3].map(|i| sealed[i].clone()).to_vec();
        st.lend(5);
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1, 2, 3, 4], vec![]));
        opened.failures.iter().map(|f| (f.packet, f.error)).collect::<Vec<_>>()
    };
    let r = WitCryptoError::Replayed;
    assert_eq!(open_all(&mut st, 100), [(1, r), (2, r)]);
    assert_eq!((st.replays_refused, st.refusals), (2, 0));
    assert_eq!(st.replays_missed, 0, "pushed out by 200 in the same call");
    assert_eq!(st.batch[1].data(), sealed[0].data(), "not opened");
    // Against the key's record from the call before, as a new key of
    // the same SA would be; with anti-replay off, every one opens.
    grant_open(&mut st, 100).note_opened(200, 1);
    st.batch = vec![sealed[0].clone(), sealed[2].clone()];
    st.lend(2);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1], vec![]));
    assert_eq!(opened.failures.iter().map(|f| (f.packet, f.error)).collect::<Vec<_>>(), [(0, r)]);
    assert_eq!((st.replays_refused, st.replays_missed), (3, 1), "left of the window before the call");
    assert!(open_all(&mut st, 0).is_empty());
    assert_eq!(st.replays_refused, 3);
}

/// The same with ESN (the whole number, high bits included), and with the
/// highest number opened by an earlier run of the key in the same call.
#[test]
fn left_of_the_window_with_esn_and_across_runs_of_one_call() {
    let mut st = state(3);
    let k = grant_open(&mut st, 100);
    // 7:1, 7:101 and 8:0 (the low word wrapped): 8:0 is 2^32 - 101 above 7:101.
    for (seq, packet) in [((7 << 32) + 1, 0), ((7 << 32) + 101, 1), (8 << 32, 2)] {
        assert!(st.seal(Resource::new_borrow(0), run(seq, true, vec![packet])).is_empty());
    }
    let sealed = st.batch.clone();
    st.batch = [1, 0, 2].map(|i| sealed[i].clone()).to_vec();
    st.lend(3);
    let runs = OpenRuns {
        runs: vec![OpenRun { key: 2, esn: true, count: 1 }, OpenRun { key: 2, esn: true, count: 2 }],
        packets: vec![0, 1, 2],
        esn_highs: vec![7, 7, 8],
    };
    let opened = st.open(Resource::new_borrow(0), runs);
    let failed: Vec<_> = opened.failures.iter().map(|f| (f.packet, f.error)).collect();
    assert_eq!(failed, [(1, WitCryptoError::Replayed)], "7:1 is 100 below 7:101, opened by the run before");
    assert_eq!(st.replays_missed, 0, "the run before is in the same call: the guest could not know");
    assert_eq!(k.authenticated().top, 8 << 32);
    // Below 8:0 by more than the window, though its low word is above.
    st.batch = vec![sealed[1].clone()];
    st.lend(1);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0], vec![7]));
    assert_eq!(opened.failures.iter().map(|f| f.error).collect::<Vec<_>>(), [WitCryptoError::Replayed]);
    assert_eq!((st.replays_refused, st.refusals, st.replays_missed), (2, 0, 1));
}

/// The same in two runs of one key in one call, with ESN (the number
/// is the one the ICV covers, high bits included), and with a run
/// that first opens a number 64 or more past the key's record.
#[test]
fn a_replay_is_refused_across_runs_of_one_key_and_with_esn() {
    let mut st = state(4);
    let mut seal = run((7 << 32) + 1, true, vec![0, 1, 2, 3]);
    seal.runs[0].first_seq = (7 << 32) + 1;
    assert!(st.seal(Resource::new_borrow(0), seal).is_empty());
    let sealed = st.batch.clone();
    // Numbers 7:1 and 7:2 opened; then 7:2, 7:3, 7:1 in two runs of one call.
    st.lend(4);
    assert!(st.open(Resource::new_borrow(0), open_run(2, vec![0, 1], vec![7, 7])).failures.is_empty());
    st.batch = vec![sealed[1].clone(), sealed[2].clone(), sealed[0].clone(), sealed[2].clone()];
    st.lend(4);
    let runs = OpenRuns {
        runs: vec![OpenRun { key: 2, esn: true, count: 2 }, OpenRun { key: 2, esn: true, count: 2 }],
        packets: vec![0, 1, 2, 3],
        esn_highs: vec![7; 4],
    };
    let opened = st.open(Resource::new_borrow(0), runs);
    let failed: Vec<_> = opened.failures.iter().map(|f| (f.packet, f.error)).collect();
    let r = WitCryptoError::Replayed;
    assert_eq!(failed, [(0, r), (2, r), (3, r)], "7:3 opened once, in the first run");
    assert_eq!(st.replays_refused, 3);
    assert_eq!(st.replays_missed, 2, "7:2 and 7:1 were opened in the call before, 7:3 in this one");
    // Another high word is another number: it does not open (the ICV
    // covers the high bits), and is no replay.
    st.batch = vec![sealed[0].clone()];
    st.lend(1);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0], vec![8]));
    assert_eq!(opened.failures[0].error, WitCryptoError::IntegrityFailed);
    // A run that opens a number far ahead first still refuses one the
    // key had before the call.
    let mut st = state(2);
    let mut far = run(1, false, vec![0]);
    far.runs[0].first_seq = 1;
    assert!(st.seal(Resource::new_borrow(0), far).is_empty());
    let one = st.batch[0].clone();
    st.lend(2);
    assert!(st.open(Resource::new_borrow(0), open_run(2, vec![0], vec![])).failures.is_empty());
    let mut ahead = run(100, false, vec![1]);
    ahead.runs[0].first_seq = 100;
    assert!(st.seal(Resource::new_borrow(0), ahead).is_empty());
    st.batch[0] = one;
    st.lend(2);
    let opened = st.open(Resource::new_borrow(0), open_run(2, vec![1, 0], vec![]));
    let failed: Vec<_> = opened.failures.iter().map(|f| (f.packet, f.error)).collect();
    assert_eq!(failed, [(0, WitCryptoError::Replayed)]);
    assert_eq!(st.replays_missed, 1);
}

#[test]
fn verdicts_follow_the_per_packet_list_and_its_exceptions() {
    let drop = |packet, reason| Dropped { packet, reason };
    let v = verdicts(
        4,
        &[7, 8, 9, 10, 11],
        &[drop(1, DropReason::Replay), drop(9, DropReason::Dummy)],
        DecapVerdict::Deliver,
        DecapVerdict::Drop,
        DecapVerdict::Missing,
    );
    assert_eq!(
        v,
        [
            DecapVerdict::Deliver(7),
            DecapVerdict::Drop(DropReason::Replay),
            DecapVerdict::Deliver(9),
            DecapVerdict::Deliver(10)
        ]
    );
    let v = verdicts(3, &[5], &[], EncapVerdict::Send, EncapVerdict::Drop, EncapVerdict::Missing);
    assert_eq!(v, [EncapVerdict::Send(5), EncapVerdict::Missing, EncapVerdict::Missing]);
}

/// The real component says where an inbound SA's state lies: within
/// its instance's memory, a slot or a guarded one (the daemon's own
/// domain), kept until the SA goes.
#[test]
fn an_inbound_sa_has_state_hints_in_either_memory_and_loses_them_with_the_sa() {
    let dir = crate::daemon::built_components_dir();
    let rt = super::super::Runtime::new(&dir.join("esp.wasm")).expect("ESP component (cargo xtask build)");
    let ts = TrafficSelector::addresses(vec![10, 0, 0, 0], vec![10, 0, 0, 255]);
    let sa = InboundSa {
        spi: SPI,
        key: 2,
        esn: false,
        replay_window: 1024,
        highest_seq: 0,
        replay_missing: 0,
        local_ts: vec![ts.clone()],
        remote_ts: vec![ts],
        limits: SaLimits::default(),
    };
    let mut slot = rt.esp_instance_of(0, super::super::EspMemory::Slot).unwrap();
    slot.install_inbound(&sa).unwrap().unwrap();
    assert_eq!(slot.hints.len(), 1, "the SA and its window, in the slot");
    assert!(slot.remove_inbound(SPI).unwrap());
    assert!(slot.hints.is_empty());
    let mut guarded = rt.esp_instance_of(0, super::super::EspMemory::Guarded).unwrap();
    guarded.install_inbound(&sa).unwrap().unwrap();
    assert_eq!(guarded.hints.len(), 1, "the SA and its window, in the guarded memory");
    assert!(guarded.remove_inbound(SPI).unwrap());
    assert!(guarded.hints.is_empty());

    // A guest whose hints point beyond its memory and are far too
    // long: they are cut to the slot, and a batch for the SA is
    // prefetched by them without harm.
    let rt = super::super::Runtime::new(&dir.join("hostile-esp.wasm")).expect("cargo xtask guests");
    let mut lying = rt.esp_instance_of(0, super::super::EspMemory::Slot).unwrap();
    lying.install_inbound(&sa).unwrap().unwrap();
    assert_eq!(lying.hints.len(), 1, "the ranges within the memory are kept");
    let mut p = PacketBuf::new();
    p.recv_area()[..60].fill(0);
    p.recv_area()[..4].copy_from_slice(&SPI.to_be_bytes());
    p.set_received(60);
    lying.store.data_mut().batch = vec![p];
    let _ = lying.decap(1);
}
