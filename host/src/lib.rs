//! The wasmsec host: owns keys, sockets, the TUN device and the wasm
//! runtime; the protocol engines run as sandboxed components.
//!
//! - [`config`]: the config file, read once into typed values
//! - [`keys`]: ESP transforms, ESP keys (seal/open in place), the keystore
//! - [`wasm`]: the only module that knows wasmtime (bindings, sandbox, the
//!   ESP and IKE components' host sides)
//! - [`datapath`]: the packet threads (TUN <-> ESP component <-> sockets)
//! - [`control`]: the IKE thread, the hand-off of CHILD SAs to the data
//!   path, the admin socket
//! - [`ops`]: the operator interfaces on one tokio thread: `/metrics`,
//!   `/healthz`, `/readyz`; [`telemetry`]: guest call metrics
//! - [`policy`]: the policy module that authorizes peers, and its hot reload
//! - [`daemon`], [`demo`]: `wasmsec run` and `wasmsec demo`
#![deny(unsafe_code)] // except in `sys`, the one module that talks to libc,
// `wasm::memory_slots` (the guests' linear memory) and one call in
// `wasm::policy` (loading a cached compiled artifact)

pub mod by_spi;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod demo;
pub mod keylog;
pub mod keys;
pub mod logwriter;
pub mod netlink;
pub mod nexthop;
pub mod offload;
pub mod ops;
pub mod output_hooks;
pub mod packet;
pub mod policy;
pub mod stats;
pub mod sys;
pub mod telemetry;
pub mod wasm;
