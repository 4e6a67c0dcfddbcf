//! The engine's counters; the host exports them as metrics.

/// Counters the host exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx: u64,
    pub tx: u64,
    pub retransmits: u64,
    pub replayed_responses: u64,
    /// Unparseable datagrams (dropped, or answered INVALID_SYNTAX when authenticated).
    pub malformed: u64,
    /// No IKE SA with that SPI.
    pub unknown_spi: u64,
    /// Messages that failed the integrity check.
    pub integrity_failed: u64,
    /// Message IDs out of window, unsolicited responses.
    pub unexpected: u64,
    pub ike_established: u64,
    pub child_installed: u64,
    pub auth_failed: u64,
    pub no_proposal: u64,
    pub ts_unacceptable: u64,
    pub timeouts: u64,
    pub keepalives: u64,
    pub dpd_checks: u64,
    pub dead_peers: u64,
    /// COOKIE notifies sent (section 2.6).
    pub cookies_sent: u64,
    /// Simultaneous CHILD SA rekeys resolved (section 2.8.1), by outcome.
    pub rekey_collisions_won: u64,
    pub rekey_collisions_lost: u64,
    /// Simultaneous IKE SA rekeys resolved (section 2.8.2), by outcome.
    pub ike_rekey_collisions_won: u64,
    pub ike_rekey_collisions_lost: u64,
    /// Requests answered TEMPORARY_FAILURE (section 2.25).
    pub temporary_failures: u64,
    /// CHILD SAs that reached a soft lifetime (rekey started) or a hard one
    /// (deleted before a rekey replaced them).
    pub lifetime_soft: u64,
    pub lifetime_hard: u64,
    /// Reauthentications started.
    pub reauths: u64,
    /// IKE_SA_INIT requests dropped at the half-open cap.
    pub half_open_drops: u64,
    /// IKE_SA_INIT requests dropped by the per-source rate limit.
    pub rate_limited: u64,
}
