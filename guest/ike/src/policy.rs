//! The policy question the engine asks its host at IKE_AUTH (the host
//! asks the tenant's policy module), in the engine's own types.
use wasmsec_wire::ike::{Identification, TrafficSelector as Ts};

use crate::output::Endpoint;

/// Asked as responder once the peer's AUTH verified, before the IKE SA is
/// established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// The connection the peer matched.
    pub connection: String,
    /// The identity the peer proved (IDi).
    pub peer: Identification,
    pub peer_address: Endpoint,
    pub local_address: Endpoint,
    /// The selectors the peer proposed for its side (TSi) and for ours (TSr).
    pub peer_ts: Vec<Ts>,
    pub local_ts: Vec<Ts>,
}

/// The host's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; the peer belongs to this tenant ("" for the connection's own).
    Accept { tenant: String },
    /// Refuse: AUTHENTICATION_FAILED to the peer, the reason to the log.
    Reject(String),
}
