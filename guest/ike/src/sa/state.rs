//! An IKE SA's state: plain data and small accessors. The exchange in
//! flight is one enum ([`InFlight`]) carrying what its answer needs (the
//! CHILD SA we proposed, our half of an IKE rekey).
use wasmsec_wire::ike::{DhGroup, TrafficSelector as Ts};

use crate::crypto::{ChildKeys, Handle};
use crate::output::{Datagram, Endpoint};
use crate::proposal::Chosen;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum State {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    InitDone,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    Established,
    /// DELETE for the IKE SA sent.
    Deleting,
}

/// A CHILD SA we proposed and wait to hear about.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct PendingChild {
    /// Index of its CHILD config in the connection.
    pub cfg: usize,
    /// Our SPI, proposed in the SA payload.
    pub inbound_spi: u32,
    /// Our side's selectors as proposed (TSi); the answer must be within them.
    pub local_ts: Vec<Ts>,
    /// The peer's side's selectors as proposed (TSr).
    pub remote_ts: Vec<Ts>,
    /// Nonce of a CREATE_CHILD_SA request.
    pub nonce: Option<Vec<u8>>,
    /// The inbound SPI of the CHILD SA this one replaces (a rekey).
    pub rekeys: Option<u32>,
    /// Our DH value and its group for PFS (KE in CREATE_CHILD_SA, section 1.3.1).
    pub dh: Option<(Handle, DhGroup)>,
    /// Creating anew a CHILD SA whose predecessor expired: retried if refused.
    pub recreate: bool,
}

/// Our rekey of the IKE SA (section 1.3.2): the new SA's SPI, our DH value
/// and its group, our nonce.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct IkeRekey {
    /// Our SPI for the new IKE SA (its SPIi).
    pub new_spi: u64,
    /// The host's handle on our DH private value.
    pub dh: Handle,
    /// The DH group of our KE payload.
    pub group: DhGroup,
    /// Our nonce (Ni).
    pub nonce: Vec<u8>,
}

/// The request of ours that awaits its response (one at a time, section 2.3).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum InFlight {
    Init,
    /// IKE_AUTH, with the first CHILD SA.
    Auth(PendingChild),
    CreateChild(PendingChild),
    RekeyIke(IkeRekey),
    DeleteIke,
    /// DELETE of the CHILD SA with this inbound SPI (after a rekey).
    DeleteChild(u32),
    /// DELETE of the CHILD SAs in `owed.delete_queue` (hard lifetime).
    DeleteExpired,
    Liveness,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Request {
    /// What the answer will complete.
    pub exchange: InFlight,
    /// Its message ID; only an answer with this one matches (section 2.2).
    pub mid: u32,
    /// The request as sent, for retransmission (section 2.1).
    pub datagram: Datagram,
    /// Transmissions so far.
    pub tries: u32,
    /// When to send it again (or give up), in engine milliseconds.
    pub next_at: u64,
}

/// An installed CHILD SA.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Child {
    /// Index of its CHILD config in the connection.
    pub cfg: usize,
    /// Ours (the SPI a DELETE or REKEY_SA names, section 3.11).
    pub inbound_spi: u32,
    /// The peer's.
    pub outbound_spi: u32,
    /// The host's handles on its two keys, released with the SA.
    pub keys: ChildKeys,
    /// Our side's selectors, as narrowed; a rekey proposes them again.
    pub local_ts: Vec<Ts>,
    /// The peer's side's.
    pub remote_ts: Vec<Ts>,
    /// When to rekey (0: not by us, or already under way).
    pub rekey_at: u64,
    /// Hard lifetime: when the SA is deleted if still here (0: never).
    pub expire_at: u64,
    /// A rekey made a successor; this SA only waits for its DELETE.
    pub replaced: bool,
}

/// Message IDs and the response cache (sections 2.1, 2.2).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Window {
    /// The message ID of our next request.
    pub next_mid: u32,
    /// The message ID the peer's next request must have.
    pub peer_next_mid: u32,
    /// Our last answer, sent again when its request is retransmitted.
    pub last_response: Option<(u32, Datagram)>,
}

/// RealMessage1 and RealMessage2 (section 2.15), and a COOKIE to repeat.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct InitMessages {
    /// The IKE_SA_INIT request as sent or received (signed by the initiator).
    pub request: Vec<u8>,
    /// The IKE_SA_INIT response (signed by the responder).
    pub response: Vec<u8>,
    /// The responder's COOKIE, repeated in our next request (section 2.6).
    pub cookie: Option<Vec<u8>>,
}

/// A simultaneous rekey seen from this SA (sections 2.8.1, 2.8.2): the
/// other side's exchange and its nonces, for the tie-break.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Collision<T> {
    /// Ours: the inbound SPI of the CHILD SA both rekey; or our SPI of the
    /// peer's new IKE SA.
    pub what: T,
    /// The nonce of the peer's request.
    pub their_ni: Vec<u8>,
    /// The nonce of our answer to it.
    pub our_nr: Vec<u8>,
}

/// Exchanges this IKE SA owes as soon as it is idle.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Owed {
    /// CHILD SAs past their hard lifetime, gone here already, that the peer
    /// must be told about: (inbound SPI, outbound SPI, DELETE sent).
    pub delete_queue: Vec<(u32, u32, bool)>,
    /// Delete this IKE SA as soon as no exchange of ours is in flight.
    pub close: bool,
    /// CHILD configs to create again (their SA expired before a rekey), not
    /// before `recreate_at`.
    pub recreate: Vec<usize>,
    /// Not before this time (engine milliseconds).
    pub recreate_at: u64,
}

/// One IKE SA and everything it carries.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct IkeSa {
    /// Index of its connection in the config.
    pub conn: usize,
    /// We sent IKE_SA_INIT for this SA (the I flag we set, section 3.1).
    pub initiator: bool,
    /// The initiator's SPI.
    pub spi_i: u64,
    /// The responder's SPI (0 until IKE_SA_INIT is answered).
    pub spi_r: u64,
    /// Our end of the IKE traffic.
    pub local: Endpoint,
    /// The peer's end, updated when NAT moves it (section 2.23).
    pub remote: Endpoint,
    /// Where in its life the SA is.
    pub state: State,
    /// The IKE proposal chosen in IKE_SA_INIT.
    pub suite: Option<Chosen>,
    /// The host's handle on SK_* (section 2.14); none before IKE_SA_INIT.
    pub keys: Option<Handle>,
    /// Initiator, before IKE_SA_INIT is answered: our DH value.
    pub dh: Option<Handle>,
    /// The group of our KE payload (INVALID_KE_PAYLOAD may change it).
    pub dh_group: DhGroup,
    /// The initiator's nonce, until IKE_AUTH has used it (AUTH and the
    /// first CHILD SA's keys, sections 2.15 and 2.17).
    pub ni: Vec<u8>,
    /// The responder's nonce, as long.
    pub nr: Vec<u8>,
    /// What the AUTH payloads sign.
    pub init: InitMessages,
    /// NAT_DETECTION found a NAT in front of us (keepalives are ours).
    pub nat_local: bool,
    /// ... or in front of the peer.
    pub nat_remote: bool,
    /// Message IDs both ways and the last response.
    pub window: Window,
    /// Our request in flight (we send one at a time: window size 1).
    pub request: Option<Request>,
    /// Its CHILD SAs, installed.
    pub children: Vec<Child>,
    /// CHILD configs already requested on this IKE SA (initiator).
    pub children_tried: Vec<usize>,
    /// Rekeyed outbound SAs waiting for the old SA's DELETE (or a
    /// deadline), by their CHILD SA's inbound SPI.
    pub deferred: Vec<(u32, u64)>,
    /// When to rekey the IKE SA (0: not by us, or under way).
    pub rekey_ike_at: u64,
    /// The peer rekeyed a CHILD SA we are rekeying too (section 2.8.1).
    pub collision: Option<Collision<u32>>,
    /// The peer rekeyed this IKE SA while we were rekeying it (section 2.8.2).
    pub ike_collision: Option<Collision<u64>>,
    /// Exchanges to start as soon as no request of ours is in flight.
    pub owed: Owed,
    /// The peer's half of a simultaneous IKE rekey that lost: the peer
    /// should delete it; if it has not by then (it may have lost track when
    /// messages were lost), we do.
    pub redundant_at: u64,
    /// When to reauthenticate (0: not by us, or under way). On the side
    /// that did not send IKE_AUTH: when the peer must have reauthenticated
    /// (RFC 4478 AUTH_LIFETIME), else the IKE SA is deleted.
    pub reauth_at: u64,
    /// We sent the IKE_AUTH request of the authentication this IKE SA stems
    /// from (kept across rekeys): only that side reauthenticates, so the two
    /// ends never replace the same IKE SA twice.
    pub auth_initiator: bool,
    /// Reauthentication: the IKE SA (our SPI) this one replaces once its
    /// CHILD SAs are up.
    pub replaces: Option<u64>,
    /// When the authentication this IKE SA stems from completed (engine
    /// milliseconds, kept across rekeys): of two IKE SAs we initiated with
    /// the same peer for one connection, the later one stays; INITIAL_CONTACT
    /// drops only those authenticated before the new one's IKE_SA_INIT.
    pub authenticated_at: u64,
    /// When IKE_SA_INIT began (engine milliseconds).
    pub created_at: u64,
    /// The peer's identity as IKE_AUTH authenticated it (its ID payload's
    /// body, section 3.5; empty before), kept across rekeys. Section 2.4's
    /// INITIAL_CONTACT speaks of the IKE SAs "between the authenticated
    /// identities": several peers may share an address (behind one NAT),
    /// and one peer may come back from another.
    pub peer_id: Vec<u8>,
    /// Last time an authentic message came from the peer.
    pub last_rx: u64,
    /// What the policy granted the peer at IKE_AUTH (as responder; the
    /// default grants what the connection says), kept across rekeys.
    pub grant: crate::policy::Grant,
    /// When the next NAT keepalive is due (RFC 3948 section 4).
    pub next_keepalive: u64,
}

impl IkeSa {
    /// A new IKE SA with nothing negotiated yet; callers set what they know.
    pub fn fresh(conn: usize, local: Endpoint, remote: Endpoint, now: u64) -> IkeSa {
        IkeSa {
            conn,
            initiator: false,
            spi_i: 0,
            spi_r: 0,
            local,
            remote,
            state: State::InitSent,
            suite: None,
            keys: None,
            dh: None,
            dh_group: DhGroup::None,
            ni: Vec::new(),
            nr: Vec::new(),
            init: InitMessages::default(),
            nat_local: false,
            nat_remote: false,
            window: Window::default(),
            request: None,
            children: Vec::new(),
            children_tried: Vec::new(),
            deferred: Vec::new(),
            rekey_ike_at: 0,
            collision: None,
            ike_collision: None,
            owed: Owed::default(),
            redundant_at: 0,
            reauth_at: 0,
            auth_initiator: false,
            replaces: None,
            authenticated_at: 0,
            grant: crate::policy::Grant::default(),
            created_at: now,
            peer_id: Vec::new(),
            last_rx: now,
            next_keepalive: 0,
        }
    }

    pub fn our_spi(&self) -> u64 {
        if self.initiator { self.spi_i } else { self.spi_r }
    }

    /// ESP in UDP: forced, or a NAT on either side (section 2.23).
    pub fn encap(&self, force: bool) -> bool {
        force || self.nat_local || self.nat_remote
    }

    pub fn established(&self) -> bool {
        self.state == State::Established
    }

    /// Our CHILD SA rekey in flight: the inbound SPI of the SA it replaces.
    pub fn rekeying_child(&self) -> Option<u32> {
        match &self.request {
            Some(Request { exchange: InFlight::CreateChild(p), .. }) => p.rekeys,
            _ => None,
        }
    }

    /// Our rekey of this IKE SA is in flight.
    pub fn rekeying_ike(&self) -> bool {
        matches!(self.request, Some(Request { exchange: InFlight::RekeyIke(_), .. }))
    }

    /// The DELETE of the CHILD SA with this inbound SPI is in flight.
    pub fn deleting_child(&self, inbound: u32) -> bool {
        matches!(self.request, Some(Request { exchange: InFlight::DeleteChild(x), .. }) if x == inbound)
    }

    pub fn child(&self, inbound: u32) -> Option<&Child> {
        self.children.iter().find(|c| c.inbound_spi == inbound)
    }

    /// One of its CHILD SAs, installed or proposed in the request in
    /// flight, has this inbound SPI.
    pub fn uses_esp_spi(&self, spi: u32) -> bool {
        self.esp_spis().any(|s| s == spi)
    }

    /// The inbound SPIs of its CHILD SAs, installed or proposed in the
    /// request in flight.
    pub fn esp_spis(&self) -> impl Iterator<Item = u32> + '_ {
        let proposed = match &self.request {
            Some(Request { exchange: InFlight::Auth(p) | InFlight::CreateChild(p), .. }) => Some(p.inbound_spi),
            _ => None,
        };
        proposed.into_iter().chain(self.children.iter().map(|c| c.inbound_spi))
    }

    pub fn child_mut(&mut self, inbound: u32) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.inbound_spi == inbound)
    }

    /// Every handle on the host's secrets this SA holds: its keys, its DH
    /// values (as `take_dh_values` takes them) and its CHILD SAs' keys.
    pub fn handles(&self) -> impl Iterator<Item = Handle> + '_ {
        let children = self.children.iter().flat_map(|c| [c.keys.outbound, c.keys.inbound]);
        self.keys.into_iter().chain(self.dh).chain(self.in_flight_dh()).chain(children)
    }

    /// The DH value of our exchange in flight (PFS, IKE rekey), if any.
    fn in_flight_dh(&self) -> Option<Handle> {
        match self.request.as_ref().map(|r| &r.exchange) {
            Some(InFlight::RekeyIke(r)) => Some(r.dh),
            Some(InFlight::CreateChild(p) | InFlight::Auth(p)) => p.dh.map(|d| d.0),
            _ => None,
        }
    }

    /// The DH values this SA holds (the IKE_SA_INIT one, and those of the
    /// exchange in flight: PFS, IKE rekey), taken for destruction with the
    /// exchange in flight.
    pub fn take_dh_values(&mut self) -> Vec<Handle> {
        let v = self.dh.take().into_iter().chain(self.in_flight_dh()).collect();
        self.request = None;
        v
    }
}
