//! The ESP engine (RFC 4303, tunnel mode) as a sans-IO library.
//!
//! It decides, the host does: for each outbound packet the engine picks the
//! SA whose traffic selectors match, assigns the sequence number and builds
//! the ESP header and trailer; for each inbound packet it finds the SA by
//! SPI, runs the anti-replay check, and after the host has opened the packet
//! checks the trailer and the inner packet against the SA's selectors.
//! Payload bytes and keys stay with the host, behind [`PacketBatch`]: the
//! engine never sees either. The same code runs natively (tests, benches)
//! and inside the ESP wasm component.
#![forbid(unsafe_code)]

mod batch;
mod engine;
pub mod replay;
pub mod selector;
pub mod spd;

pub use batch::{
    CryptoError, ESP_HEAD_LEN, Heads, IP_HEAD_LEN, KeyHandle, OpFailure, OpenRun, OpenRuns, Opened, PacketBatch,
    SealRun, SealRuns,
};
pub use engine::{
    DecapVerdict, Decapped, DropReason, Dropped, EncapVerdict, Encapped, Engine, Expiry, ExpiryCause, InboundSa,
    OutboundSa, SEQ_SOFT_MARGIN, SEQ_SOFT_MARGIN_ESN, SaError, SaState,
};
pub use selector::{TrafficSelector, TsList};
pub use wasmsec_wire::SaLimits;
