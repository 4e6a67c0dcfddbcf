//! Tests only (feature `hostile`, built as `hostile-ike.wasm`): the real IKE
//! engine with one attack on the host, chosen by the name of the first
//! connection loaded:
//!
//! | connection name         | attack |
//! |-------------------------|--------|
//! | `hostile-derive-twice`  | every CHILD SA's keys are derived a second time from the same nonces |
//! | `hostile-swap-handles`  | CHILD SAs are installed with their inbound and outbound key handles swapped |
//! | `hostile-wrong-ske`     | every message is encrypted with the peer's SK_e |
//! | `hostile-trap-marker`   | traps on a datagram whose initiator SPI is [`TRAP_MARKER`] |
//! | `hostile-trap-after-initiate` | the first instance traps in the `poll` after an `initiate` (a replacement, which is restored, does not) |
//! | `hostile-trap-on-terminate` | every instance traps in every `terminate` |
//! | `hostile-send-anywhere` | every `poll` sends a datagram from UDP 500 to host A on gateway A's LAN (198.18.1.10:500), which no peer or connection has |
//! | `hostile-send-from-elsewhere` | every `poll` sends a datagram to gateway B (198.18.0.2:500, the connection's remote) from gateway A's LAN address ([`OTHER_SOURCE`]), where no IKE arrived and which no connection names |
//! | `hostile-delete-others` | every `poll` deletes the honest manual tunnel of `test-hostile-ike.sh` (out SPI 0x00001001, in 0x00001002), which it never installed |
//! | `hostile-other-connection` | every CHILD SA is installed for the connection [`VICTIM`] (another tenant's, with another key) instead of its own |
//! | `hostile-widen-selectors` | every CHILD SA is installed with the peer's side widened to every IPv4 address |
//! | `hostile-ignore-policy` | every policy answer is taken as an accept, whatever the host's policy said |
//! | `hostile-move-elsewhere` | every `poll` moves the ESP of the CHILD SAs it installed to host A on gateway A's LAN (198.18.1.10:4500), as if the peer's NAT mapping had changed |
//! | `hostile-other-source` | every CHILD SA is installed with our end at gateway A's LAN address ([`OTHER_SOURCE`]), another of its own than the one the peer sends to |
//! | `hostile-skip-auth` | every peer's AUTH is taken as verified, whatever the host's check said (a peer with the wrong key gets a CHILD SA) |
//! | `hostile-weaker-transform` | every CHILD SA's keys are derived for, and the SA installed with, AES-CBC-128 with HMAC-SHA-256, which the connection does not propose |
//! | `hostile-weaker-other-child` | the same, where another child of the connection (other subnets) proposes that transform |
//! | `hostile-unlimited` | every CHILD SA is installed without hard byte and packet limits, whatever the connection's |
//! | `hostile-skip-pfs` | every CHILD SA's keys are derived without the key exchange its proposal negotiated (no PFS on a rekey), the DH value left unused |
//! | `hostile-keep-expired`, `hostile-keep-expired-packets` | no CHILD SA is ever deleted from the host (the engine still deletes it with the peer at its hard lifetime; the second name's test limits packets, not time) |
//!
//! The host must refuse each (and count it); the IKE SA may fail, the host
//! must not: no key is handed out twice, no SA with swapped keys is
//! installed, nothing is encrypted under the peer's key. The trap tests
//! the host's replacement in the middle of a read of the IKE port: the
//! datagrams read with the one that trapped must still be served. The trap
//! after an initiate tests an admin command whose messages the trap lost:
//! its answer must wait for them, and the replacement must send them. The
//! trap on terminate is a command that traps every replacement too: the
//! host must give it up after one more try, not trap guest after guest.
//!
//! Whatever the attack, the first `poll` after a connection is loaded also
//! hands the host a log line that tries to forge another (a newline, then
//! `FORGED-BY-THE-IKE-GUEST`) and runs on for 20,000 characters: the host
//! must escape and cut it.
use std::cell::Cell;

/// The attack this instance makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    None,
    DeriveTwice,
    SwapHandles,
    WrongSke,
    TrapOnMarker,
    TrapAfterInitiate,
    TrapOnTerminate,
    DeleteOthers,
    SendAnywhere,
    SendFromElsewhere,
    OtherConnection,
    WidenSelectors,
    IgnorePolicy,
    MoveElsewhere,
    OtherSource,
    SkipAuth,
    WeakerTransform,
    Unlimited,
    SkipPfs,
    KeepExpired,
}

/// For `OtherConnection`: the connection every CHILD SA is installed for.
pub const VICTIM: &str = "victim";

/// For `OtherSource` and `SendFromElsewhere`: the address every CHILD
/// SA's ESP, or the datagram, is to leave from (gateway A's LAN side in
/// `test-hostile-ike.sh`).
pub const OTHER_SOURCE: [u8; 4] = [198, 18, 1, 1];

/// For `TrapOnMarker`: the initiator SPI ("TRAPTRAP") that traps.
pub const TRAP_MARKER: [u8; 8] = *b"TRAPTRAP";

thread_local! {
    static ATTACK: Cell<Attack> = const { Cell::new(Attack::None) };
}

/// Pick the attack from a connection's name (the first one decides).
pub fn choose(connection: &str) {
    if ATTACK.get() != Attack::None {
        return;
    }
    ATTACK.set(match connection {
        "hostile-derive-twice" => Attack::DeriveTwice,
        "hostile-swap-handles" => Attack::SwapHandles,
        "hostile-wrong-ske" => Attack::WrongSke,
        "hostile-trap-marker" => Attack::TrapOnMarker,
        "hostile-trap-after-initiate" => Attack::TrapAfterInitiate,
        "hostile-trap-on-terminate" => Attack::TrapOnTerminate,
        "hostile-delete-others" => Attack::DeleteOthers,
        "hostile-send-anywhere" => Attack::SendAnywhere,
        "hostile-send-from-elsewhere" => Attack::SendFromElsewhere,
        "hostile-other-connection" => Attack::OtherConnection,
        "hostile-widen-selectors" => Attack::WidenSelectors,
        "hostile-ignore-policy" => Attack::IgnorePolicy,
        "hostile-move-elsewhere" => Attack::MoveElsewhere,
        "hostile-other-source" => Attack::OtherSource,
        "hostile-skip-auth" => Attack::SkipAuth,
        "hostile-weaker-transform" => Attack::WeakerTransform,
        "hostile-weaker-other-child" => Attack::WeakerTransform,
        "hostile-unlimited" => Attack::Unlimited,
        "hostile-skip-pfs" => Attack::SkipPfs,
        "hostile-keep-expired" | "hostile-keep-expired-packets" => Attack::KeepExpired,
        _ => Attack::None,
    });
}

pub fn attack() -> Attack {
    ATTACK.get()
}

/// For `TrapOnMarker`: trap (a panic is `unreachable` in wasm) on the marker.
pub fn trap_on_marker(data: &[u8]) {
    if attack() == Attack::TrapOnMarker && data.starts_with(&TRAP_MARKER) {
        panic!("hostile-trap-marker: the marked datagram");
    }
}

/// For `TrapOnTerminate`: trap in every terminate.
pub fn trap_on_terminate() {
    if attack() == Attack::TrapOnTerminate {
        panic!("hostile-trap-on-terminate: a terminate");
    }
}

thread_local! {
    /// This instance restored checkpoints: it is a replacement.
    static RESTORED: Cell<bool> = const { Cell::new(false) };
    /// An initiate since the last poll, in an instance that was not restored.
    static INITIATED: Cell<bool> = const { Cell::new(false) };
}

/// The host restored checkpoints into this instance.
pub fn restored() {
    RESTORED.set(true);
}

/// For `TrapAfterInitiate`: an initiate was carried out (and queued its
/// IKE_SA_INIT, which the next poll would hand over).
pub fn initiated() {
    if attack() == Attack::TrapAfterInitiate && !RESTORED.get() {
        INITIATED.set(true);
    }
}

/// For `TrapAfterInitiate`: trap in the poll that would hand it over.
pub fn trap_after_initiate() {
    if INITIATED.get() {
        panic!("hostile-trap-after-initiate: the poll after an initiate");
    }
}

/// For `WeakerTransform`: AES-CBC-128 with HMAC-SHA-256 in place of the
/// ESP transform negotiated.
pub fn weaker(mut s: wasmsec_ike::crypto::ChildSuite) -> wasmsec_ike::crypto::ChildSuite {
    if attack() == Attack::WeakerTransform {
        s.encr = wasmsec_wire::ike::EncrId::AesCbc;
        s.key_bits = 128;
        s.integ = wasmsec_wire::ike::IntegId::HmacSha2_256_128;
    }
    s
}

/// For `WrongSke`: encrypt as the other side would.
pub fn encrypt_as_initiator(from_initiator: bool) -> bool {
    if attack() == Attack::WrongSke { !from_initiator } else { from_initiator }
}

thread_local! {
    static FORGED: Cell<bool> = const { Cell::new(false) };
}

/// Once, after a connection chose an attack: a log line that would forge
/// a second one if the host wrote it as it is.
pub fn forged_log_line() -> Option<crate::wit::Event> {
    if attack() == Attack::None || FORGED.replace(true) {
        return None;
    }
    Some(crate::wit::Event::Log(crate::wit::LogEvent {
        level: crate::wit::Level::Warn,
        connection: "hostile\nconnection".into(),
        message: format!("a hostile guest's line\nFORGED-BY-THE-IKE-GUEST {}", "x".repeat(20_000)),
    }))
}

/// For `DeleteOthers`: a Delete of an SA this guest did not install (the
/// manual tunnel's SPIs; key handles it cannot know, as they are random).
pub fn delete_others() -> Option<crate::wit::SaChange> {
    (attack() == Attack::DeleteOthers).then_some(crate::wit::SaChange::Delete(crate::wit::ChildDeleted {
        ike_spi: 0,
        inbound_spi: 0x0000_1002,
        outbound_spi: 0x0000_1001,
        inbound_key: 1,
        outbound_key: 2,
        keep_inbound_ms: 0,
    }))
}

/// For `KeepExpired`: whether the host hears of this SA change (no
/// Delete does).
pub fn keeps(c: &crate::wit::SaChange) -> bool {
    attack() != Attack::KeepExpired || !matches!(c, crate::wit::SaChange::Delete(_))
}

/// For `SendAnywhere`: a datagram to an address no peer has (the gateway
/// as a reflector towards its own LAN).
pub fn send_anywhere() -> Option<crate::wit::Transmit> {
    (attack() == Attack::SendAnywhere).then(|| {
        crate::wit::Transmit::Datagram(crate::wit::Datagram {
            local: crate::wit::Endpoint { address: vec![0, 0, 0, 0], port: 500 },
            remote: crate::wit::Endpoint { address: vec![198, 18, 1, 10], port: 500 },
            data: b"REFLECTED-BY-THE-IKE-GUEST".to_vec(),
        })
    })
}

/// For `SendFromElsewhere`: a datagram to the peer from an address of
/// ours IKE never arrived at.
pub fn send_from_elsewhere() -> Option<crate::wit::Transmit> {
    (attack() == Attack::SendFromElsewhere).then(|| {
        crate::wit::Transmit::Datagram(crate::wit::Datagram {
            local: crate::wit::Endpoint { address: OTHER_SOURCE.to_vec(), port: 500 },
            remote: crate::wit::Endpoint { address: vec![198, 18, 0, 2], port: 500 },
            data: b"SENT-FROM-ELSEWHERE-BY-THE-IKE-GUEST".to_vec(),
        })
    })
}

thread_local! {
    /// For `MoveElsewhere`: the CHILD SAs installed, by inbound SPI (the
    /// data plane's name for both halves).
    static INSTALLED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// For `MoveElsewhere`: a CHILD SA with this inbound SPI was installed.
pub fn installed(inbound_spi: u32) {
    INSTALLED.with_borrow_mut(|v| v.push(inbound_spi));
}

/// For `MoveElsewhere`: a NAT mapping change no peer made, to an address
/// no peer has.
pub fn move_elsewhere() -> Option<crate::wit::SaChange> {
    let spis = INSTALLED.with_borrow(|v| v.clone());
    (attack() == Attack::MoveElsewhere && !spis.is_empty()).then(|| {
        crate::wit::SaChange::PeerMoved((spis, crate::wit::Endpoint { address: vec![198, 18, 1, 10], port: 4500 }))
    })
}
