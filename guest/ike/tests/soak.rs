//! A lossy soak of every lifecycle event at once.
mod harness;

use harness::*;

#[test]
fn a_lossy_soak_of_every_lifecycle_event_settles_to_one_ike_sa_and_one_pair() {
    // Both ends rekey CHILD and IKE SAs on timers that drift against each
    // other, reauthenticate, the data plane reports soft and hard limits
    // at random, and datagrams are lost, for 5 minutes of virtual time; then
    // 200 s without loss (long enough for a side whose peer gave up on an IKE
    // SA to find out through its own retransmissions, twice). Whatever
    // happened, both ends must end up with one
    // IKE SA and one pair per CHILD config, with keys that agree, and
    // nothing else in their vaults or keystores.
    let extra: (&[&str], &[&str]) = (&["198.18.11.0/24"], &["198.18.12.0/24"]);
    let variants = [
        // (A, B, 1 datagram lost in N, seeds)
        (
            Conf { rekey_ms: 3_000, ike_rekey_ms: 7_000, reauth_ms: 20_000, ..Default::default() },
            Conf { rekey_ms: 3_500, ike_rekey_ms: 9_000, ..Default::default() },
            20,
            soak_seeds(),
        ),
        (
            Conf {
                esp: "aes256gcm16-x25519",
                rekey_ms: 2_000,
                ike_rekey_ms: 5_000,
                extra_child: Some(extra),
                dpd_ms: 4_000,
                dpd_action: DpdAction::Restart,
                ..Default::default()
            },
            Conf {
                esp: "aes256gcm16-x25519",
                rekey_ms: 2_500,
                ike_rekey_ms: 6_000,
                reauth_ms: 17_000,
                extra_child: Some(extra),
                ..Default::default()
            },
            8,
            soak_seeds(),
        ),
        // Both ends reauthenticate, on close timers.
        (
            Conf { rekey_ms: 3_000, ike_rekey_ms: 8_000, reauth_ms: 12_000, ..Default::default() },
            Conf { rekey_ms: 3_500, ike_rekey_ms: 9_000, reauth_ms: 12_500, ..Default::default() },
            20,
            soak_seeds(),
        ),
    ];
    for (vi, (conf_a, conf_b, loss, seeds)) in variants.iter().enumerate() {
        for seed in first_seed()..=*seeds {
            let pairs = if conf_a.extra_child.is_some() { 2 } else { 1 };
            let mut a = side(A, B, conf_a);
            let mut b = side(B, A, conf_b);
            // The engines' nonces and SPIs from the seed too, so that a
            // failing seed fails again (WASMSEC_SOAK_FIRST_SEED to start there).
            a.crypto.test_random = Some(seed.wrapping_mul(0xa076_1d64_78bd_642f) ^ (vi as u64) << 56 | 1);
            b.crypto.test_random = Some(seed.wrapping_mul(0xe703_7ed1_a0b4_28db) ^ (vi as u64) << 56 | 1);
            let mut chaos = Chaos(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut lossy = Chaos(seed.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1);
            a.engine.initiate(0, "site", &mut a.crypto).unwrap();
            let (mut now, mut n) = (0u64, 0usize);
            while now < 500_000 {
                let lossy_phase = now < 300_000;
                pump(&mut a, &mut b, now, &mut |_, _| !(lossy_phase && lossy.one_in(*loss)), &mut n);
                if std::env::var("WASMSEC_SOAK_DEBUG").is_ok() {
                    let ups = |s: &Side| s.engine.describe().iter().filter(|l| l.contains("Established")).count();
                    if ups(&a) >= 2 || ups(&b) >= 2 {
                        a.logs.push(format!("@{now} A {:?}", a.engine.describe()));
                        b.logs.push(format!("@{now} B {:?}", b.engine.describe()));
                    }
                }
                let next = [a.engine.next_timeout(), b.engine.next_timeout()].into_iter().flatten().min();
                now = next.unwrap_or(now + 500).clamp(now + 1, now + 500);
                if lossy_phase {
                    for s in [&mut a, &mut b] {
                        let live: Vec<u32> = s
                            .installed
                            .iter()
                            .filter(|c| s.crypto.esp.contains_key(&c.inbound_key))
                            .map(|c| c.inbound_spi)
                            .collect();
                        if live.is_empty() {
                            continue;
                        }
                        let spi = live[chaos.next() as usize % live.len()];
                        if chaos.one_in(40) {
                            s.engine.child_expired(now, spi, false, &mut s.crypto);
                        } else if chaos.one_in(400) {
                            s.engine.child_expired(now, spi, true, &mut s.crypto);
                        }
                    }
                }
                // Like a `start` or `trap` connection: an initiation that
                // lost every one of its transmissions is tried again.
                if a.engine.ike_sa_count() == 0 && b.engine.ike_sa_count() == 0 {
                    a.engine.initiate(now, "site", &mut a.crypto).unwrap();
                }
                a.engine.tick(now, &mut a.crypto);
                b.engine.tick(now, &mut b.crypto);
            }
            pump(&mut a, &mut b, now, &mut all, &mut n);
            let (sa, sb) = (a.engine.stats(), b.engine.stats());
            let what = format!(
                "seed {seed}: {:?} {:?}\n{sa:?}\n{sb:?}\nA: {:?}\nB: {:?}",
                a.engine.describe(),
                b.engine.describe(),
                a.logs.iter().rev().take(30).collect::<Vec<_>>(),
                b.logs.iter().rev().take(30).collect::<Vec<_>>()
            );
            let settled = (a.engine.ike_sa_count(), b.engine.ike_sa_count()) == (1, 1)
                && (a.engine.established(), b.engine.established()) == ((1, pairs), (1, pairs))
                && (a.crypto.vault.len(), b.crypto.vault.len()) == (2, 2);
            if !settled {
                // Both engines' logs for the post-mortem (with WASMSEC_SOAK_DEBUG=1
                // they hold a state line per step while more than one IKE SA is up).
                let dir = std::env::temp_dir();
                std::fs::write(dir.join("wasmsec-soak-a.log"), a.logs.join("\n")).ok();
                std::fs::write(dir.join("wasmsec-soak-b.log"), b.logs.join("\n")).ok();
            }
            assert!(sa.retransmits > 0 && sa.reauths + sb.reauths >= 10 && sa.lifetime_soft > 0, "{what}");
            assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1), "variant {vi} {what}");
            assert_eq!(
                (a.engine.established(), b.engine.established()),
                ((1, pairs), (1, pairs)),
                "variant {vi} {what}"
            );
            assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2), "variant {vi} {what}");
            assert_live_pairs(&a, &b, pairs);
        }
    }
}

/// xorshift64*: a deterministic source of chaos for the soak test.
struct Chaos(u64);

impl Chaos {
    fn next(&mut self) -> u64 {
        wasmsec_crypto::ike_engine::test_stream(&mut self.0)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

/// The first seed of each variant: 1, or `WASMSEC_SOAK_FIRST_SEED` to go
/// on with a search where the last one ended.
fn first_seed() -> u64 {
    std::env::var("WASMSEC_SOAK_FIRST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// Seeds per soak variant, each 500 s of virtual time: 100 by default (a
/// few seconds), more with `WASMSEC_SOAK_SEEDS` when hunting.
fn soak_seeds() -> u64 {
    std::env::var("WASMSEC_SOAK_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}
