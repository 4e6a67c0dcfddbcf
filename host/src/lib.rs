//! The wasmsec host: owns keys, sockets, the TUN device and the wasm
//! runtime; the protocol engines run as sandboxed components.
#![deny(unsafe_code)] // except in `sys`, the one module that talks to libc

pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod demo;
pub mod ike;
pub mod keylog;
pub mod keystore;
pub mod packet;
pub mod runtime;
pub mod stats;
pub mod sys;
