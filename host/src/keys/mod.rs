//! Keys in the host: the ESP transforms and their IANA mapping
//! ([`algorithm`]), ESP keys that seal and open in place ([`esp_key`]), and
//! the keystore that hands guests handles, never keys ([`store`]), and
//! what each key carried against its SA's limits ([`usage`]).
pub mod algorithm;
pub mod esp_key;
pub mod iv_reservation;
pub mod store;
pub mod usage;

pub use algorithm::{EspAlgorithm, Integ};
pub use esp_key::{Authenticated, CryptoError, EspKey, KeyError};
pub use store::{KeyTable, KeyUse, Keystore};
