//! The one place that owns `bindgen!`: the ESP, IKE and policy worlds. They share
//! one Rust type per WIT type: the IKE bindings reuse the crypto and net
//! interfaces generated for the ESP world (`with`).
#![allow(clippy::all)]

pub mod esp {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmsec:worlds/esp-engine",
        additional_derives: [PartialEq, serde::Serialize],
        with: {
            "wasmsec:crypto/packets.batch": crate::wasm::esp::Batch,
        },
    });
}

pub mod ike {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmsec:worlds/ike-engine",
        additional_derives: [PartialEq, serde::Serialize],
        with: {
            "wasmsec:crypto/types": super::esp::wasmsec::crypto::types,
            "wasmsec:net/types": super::esp::wasmsec::net::types,
            "wasmsec:policy/types": super::policy::wasmsec::policy::types,
        },
    });
}

pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmsec:worlds/policy",
        additional_derives: [PartialEq, serde::Serialize],
    });
}
