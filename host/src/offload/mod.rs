//! TUN offloads: TCP super-packets in, and their segments out, so that a
//! read from the TUN device brings up to 64 KiB instead of one MTU.
//! Pure functions on byte slices, tested natively; `sys::Tun` does the
//! system calls and `datapath::outbound` the cutting.
pub mod coalesce;
pub mod segment;
pub mod vnet;
