//! IKE SAs: their state, their CHILD SAs, and their life over time.
pub(crate) mod child;
pub(crate) mod duplicates;
pub(crate) mod lifecycle;
mod lookups;
pub(crate) mod state;
pub(crate) mod table;
