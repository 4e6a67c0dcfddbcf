//! Volume lifetimes of an SA (RFC 4301 section 4.4.2.1), as the IKE engine
//! negotiates them and the ESP engine counts them: one type for both.

/// Per-SA byte and packet limits; 0 means none. Passing a soft limit asks
/// the control plane for a rekey; at a hard limit the SA carries nothing more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaLimits {
    /// Bytes of payload before a rekey is asked for.
    pub soft_bytes: u64,
    /// Packets before a rekey is asked for.
    pub soft_packets: u64,
    /// Bytes of payload after which the SA carries nothing more.
    pub hard_bytes: u64,
    /// Packets after which the SA carries nothing more.
    pub hard_packets: u64,
}
