//! The IKEv2 engine (RFC 7296) as a sans-IO library: IKE_SA_INIT and
//! IKE_AUTH with pre-shared keys, additional CHILD SAs, INFORMATIONAL
//! (DELETE, liveness), retransmission and cached responses, NAT detection.
//! Every secret stays with the host behind [`crypto::IkeCrypto`].
#![forbid(unsafe_code)]

pub mod crypto;
pub mod engine;
pub mod identity;
pub mod proposal;
pub mod ts;

pub use engine::{
    Action, ChildConfig, ChildSa, ConnectionConfig, DELETED_INBOUND_LINGER_MS, Datagram, DpdAction, Endpoint, Engine, Level,
    Limits, StartAction,
    Stats, Timing,
};
