//! What each fuzz target does with its input, as plain functions: the
//! cargo-fuzz binaries in `fuzz/` call them, and `tests/corpus.rs` replays
//! the whole corpus (seeds and every input that once failed) through them
//! in the ordinary test suite. A target fails by panicking.
//!
//! The IKE and ESP engines run on deterministic crypto ([`ike_crypto`],
//! [`esp_batch`]): "encryption" is the identity, so fuzzed input reaches
//! the paths behind decryption and authentication (IKE_AUTH,
//! CREATE_CHILD_SA, INFORMATIONAL, ESP trailers and selectors) that real
//! keys would keep it from.
#![deny(unsafe_code)] // but in `alloc_meter`, the allocator the binaries install

pub mod alloc_meter;
pub mod esp_batch;
pub mod ike_crypto;
mod targets;

pub use targets::{config, esp_decap, ike_message, ike_responder, records, replay_responder};

/// What the seed generator shares with the targets.
pub mod targets_support {
    pub use crate::targets::{End, RESPONDER, engine, responder};
}

/// A target: its input, or a panic.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/` and the corpus directories call them.
pub const TARGETS: [(&str, Target); 4] =
    [("ike_message", ike_message), ("ike_responder", ike_responder), ("esp_decap", esp_decap), ("config", config)];
