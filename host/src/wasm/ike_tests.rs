//! The IKE guest's host state: what it keeps and destroys of the vault,
//! the keystore and the checkpoints.
use super::*;

/// A peer's identity leaves the IKE guest fit for the admin view, as its
/// log lines do: no control character (a forged row of `list-sas`), no
/// more than 255 characters.
#[test]
fn a_peers_identity_comes_out_of_the_guest_fit_for_the_admin_view() {
    let up = |remote_id: String| {
        let at = Endpoint { address: vec![198, 18, 0, 2], port: 500 };
        Event::IkeUp(IkeSaUp {
            connection: "pop".into(),
            ike_spi: 1,
            proposal: "aes256gcm16-prfsha256-x25519".into(),
            initiator: false,
            local: at.clone(),
            remote: at,
            nat_local: false,
            nat_remote: false,
            rekeyed: false,
            remote_id,
        })
    };
    let shown = |e: Event| match e {
        Event::IkeUp(u) => u.remote_id,
        _ => unreachable!(),
    };
    let mut forged = up("gw4.example\n  pop  0000000000000005".into());
    fit_for_log(&mut forged);
    assert_eq!(shown(forged), "gw4.example\\n  pop  0000000000000005");
    let mut long = up("\u{e9}".repeat(300));
    fit_for_log(&mut long);
    let long = shown(long);
    assert_eq!(long.chars().count(), 255 + 1);
    assert!(long.ends_with("\u{e9}\u{2026}"));
    let mut plain = up("x".repeat(255));
    fit_for_log(&mut plain);
    assert_eq!(shown(plain), "x".repeat(255), "255 characters are shown whole");
}

#[test]
fn a_guest_holds_no_sa_by_the_hosts_records_only_with_nothing_but_psks() {
    let mut st = IkeState::new(wasmsec_crypto::Vault::new(), Arc::new(Keystore::new()));
    let psk = st.insert_psk("gw", Zeroizing::new(b"a key".to_vec()));
    assert!(st.holds_no_sa(), "a PSK is configuration, not an SA");
    st.keep_checkpoints(vec![(1, Some(vec![1; 10]))]);
    assert!(!st.holds_no_sa(), "an IKE SA's checkpoint");
    st.keep_checkpoints(vec![(1, None)]);
    assert!(st.holds_no_sa());
    // A secret that is no PSK: an IKE SA's keys or a DH value in flight.
    st.forget_psk(psk);
    st.vault.insert_psk(Zeroizing::new(b"not owned".to_vec()));
    assert!(!st.holds_no_sa(), "a secret no connection owns");
}

#[test]
fn checkpoints_beyond_the_bounds_are_refused_and_the_stale_one_goes() {
    let mut st = IkeState::new(wasmsec_crypto::Vault::new(), Arc::new(Keystore::new()));
    st.keep_checkpoints(vec![(1, Some(vec![1; 100])), (2, Some(vec![2; 200]))]);
    assert_eq!((st.checkpoints().len(), st.checkpoint_bytes, st.refusals), (2, 300, 0));
    // SA 1 checkpointed again, too large: refused, and its older one gone.
    st.keep_checkpoints(vec![(1, Some(vec![1; MAX_CHECKPOINT_BYTES + 1]))]);
    assert_eq!((st.checkpoints(), st.checkpoint_bytes, st.refusals), (vec![vec![2; 200]], 200, 1));
    // Many that fit one by one, but not all together: beside SA 2's 200
    // bytes, the last two of these do not.
    let n = MAX_CHECKPOINTS_BYTES / MAX_CHECKPOINT_BYTES;
    st.keep_checkpoints((10..10 + n as u64 + 1).map(|spi| (spi, Some(vec![0; MAX_CHECKPOINT_BYTES]))).collect());
    assert_eq!(st.refusals, 3);
    assert!(st.checkpoint_bytes <= MAX_CHECKPOINTS_BYTES);
    st.keep_checkpoints(vec![(2, None)]);
    st.clear_checkpoints();
    assert_eq!((st.checkpoints().len(), st.checkpoint_bytes), (0, 0));
}

/// A CHILD SA key pair derived as `child_keymat` does, for tests.
fn derived_pair(st: &mut IkeState) -> (u64, u64) {
    let key = || EspKey::new(EspAlgorithm::Aes256Gcm16, Zeroizing::new(vec![7; 36])).unwrap();
    let (outbound, inbound) = (st.esp_keys.insert(key()), st.esp_keys.insert(key()));
    let d = Derived {
        inbound,
        alg: EspAlgorithm::Aes256Gcm16,
        authenticated_by: 0,
        grant: Arc::new(GrantBounds::of(&crate::policy::connection_grant("")).unwrap()),
        lineage: 0,
        key_exchange: wasmsec_crypto::ChildKeyExchange::Created(None),
    };
    st.derived.insert(outbound, d);
    (outbound, inbound)
}

#[test]
fn destroying_either_key_of_a_derived_pair_takes_both_from_the_keystore() {
    use b::wasmsec::crypto::ike_keys::Host;
    let mut st = IkeState::new(wasmsec_crypto::Vault::new(), Arc::new(Keystore::new()));
    let (_, inbound) = derived_pair(&mut st);
    let (outbound, _) = derived_pair(&mut st);
    assert_eq!(st.esp_keys.len(), 4);
    st.destroy(inbound);
    st.destroy(outbound);
    assert_eq!((st.esp_keys.len(), st.derived.len()), (0, 0), "no half of a pair left behind");
}

#[test]
fn after_a_replacement_only_what_the_guest_holds_and_the_psks_stay() {
    let mut st = IkeState::new(wasmsec_crypto::Vault::new(), Arc::new(Keystore::new()));
    let psk = st.insert_psk("gw", Zeroizing::new(b"a key".to_vec()));
    let (kept_dh, _) = st.vault.dh_generate(wasmsec_wire::ike::DhGroup::X25519).unwrap();
    let (lost_dh, _) = st.vault.dh_generate(wasmsec_wire::ike::DhGroup::X25519).unwrap();
    let (lost_out, lost_in) = derived_pair(&mut st);
    let (kept_out, _) = derived_pair(&mut st);
    assert_eq!(st.unrestorable_secrets(), 4);
    // The guest names a PSK it may not drop, nothing of the lost pair,
    // and a handle that is no secret at all.
    let gone = st.destroy_unheld(vec![kept_dh, kept_out, 999, kept_dh]);
    assert_eq!(gone, 2, "the lost DH value and the lost pair");
    assert!(st.vault.handles().contains(&psk), "a connection's PSK stays whatever the guest says");
    assert!(st.vault.handles().contains(&kept_dh) && !st.vault.handles().contains(&lost_dh));
    assert_eq!(st.esp_keys.len(), 2, "the held pair's two keys, none of the lost one's ({lost_out}, {lost_in})");
    assert_eq!(st.destroy_unheld(Vec::new()), 2, "then the rest, the PSK apart");
    assert!(st.holds_no_sa());
}

#[test]
fn a_connections_psk_is_not_the_guests_to_destroy() {
    use b::wasmsec::crypto::ike_keys::Host;
    let mut st = IkeState::new(wasmsec_crypto::Vault::new(), Arc::new(Keystore::new()));
    let psk = st.insert_psk("c", Zeroizing::new(b"the operator's key".to_vec()));
    st.destroy(psk);
    assert_eq!((st.secrets(), st.refusals), (1, 1), "kept, and the attempt counted");
    st.forget_psk(psk);
    assert_eq!(st.secrets(), 0, "the host forgets it with its connection");
}
