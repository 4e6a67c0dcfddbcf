//! Keys in the host: the ESP transforms and their IANA mapping
//! ([`algorithm`]), ESP keys that seal and open in place ([`esp_key`]), and
//! the keystore that hands guests handles, never keys ([`store`]).
pub mod algorithm;
pub mod esp_key;
pub mod iv_reservation;
pub mod store;

pub use algorithm::{EspAlgorithm, Integ};
pub use esp_key::{CryptoError, EspKey, KeyError};
pub use store::{KeyTable, KeyUse, Keystore};
