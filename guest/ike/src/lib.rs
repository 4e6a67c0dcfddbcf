//! The IKEv2 engine (RFC 7296) as a sans-IO library: IKE_SA_INIT and
//! IKE_AUTH with pre-shared keys, CHILD SAs and their rekeys, IKE SA
//! rekeys and reauthentication, INFORMATIONAL (DELETE, liveness),
//! retransmission and cached responses, NAT detection, COOKIEs.
//! Every secret stays with the host behind [`crypto::IkeCrypto`].
//!
//! Datagrams, time and admin commands go in ([`Engine`]); datagrams to
//! send, SA changes for the data plane and events come out of three queues
//! ([`Engine::poll_transmit`], [`Engine::poll_sa_change`],
//! [`Engine::poll_event`]). Time is a millisecond counter the host passes
//! in, so tests run two engines against each other on virtual time.
//!
//! Layout: `endpoint` (the engine, routing, admin, timers), `exchange/`
//! (one module per exchange; message plumbing in `exchange/mod.rs`),
//! `sa/` (an IKE SA's state, its CHILD SAs, its lifecycle), `dos`
//! (half-open cap, cookies, rate limit), `ctx` (what an exchange may
//! touch), `config`, `connections` (the loaded connections and their
//! indexes), `output`, `error`, `stats`.
#![forbid(unsafe_code)]

pub mod config;
mod connections;
pub mod crypto;
mod ctx;
mod dos;
mod endpoint;
pub mod error;
mod exchange;
pub mod identity;
pub mod output;
pub mod policy;
pub mod proposal;
mod sa;
pub mod stats;
pub mod ts;

pub use config::{ChildConfig, ConnectionConfig, DpdAction, HardLimits, StartAction, Timing};
pub use endpoint::{Engine, SaPhase};
pub use error::Error;
pub use output::{ChildSa, Datagram, Endpoint, Event, IKE_PORT, Level, NAT_T_PORT, SaChange, Transmit};
pub use policy::{AuthorizeRequest, Decision, Grant};
pub use sa::child::DELETED_INBOUND_LINGER_MS;
pub use stats::Stats;
