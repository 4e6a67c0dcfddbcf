//! The engine's counters; the host exports them as metrics.

/// Counters the host exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// IKE datagrams received, parseable or not.
    pub rx: u64,
    /// IKE datagrams sent, retransmissions included (keepalives not).
    pub tx: u64,
    /// Requests sent again because no response came in time.
    pub retransmits: u64,
    /// Retransmitted peer requests answered with the stored response (section 2.2).
    pub replayed_responses: u64,
    /// Unparseable datagrams (dropped, or answered INVALID_SYNTAX when authenticated).
    pub malformed: u64,
    /// No IKE SA with that SPI.
    pub unknown_spi: u64,
    /// Datagrams above `Timing::max_message`, dropped unread.
    pub oversize: u64,
    /// Messages that failed the integrity check.
    pub integrity_failed: u64,
    /// Message IDs out of window, unsolicited responses.
    pub unexpected: u64,
    /// IKE SA set-ups begun: IKE_SA_INIT sent as initiator (reauthentication
    /// included) or answered as responder.
    pub handshakes_started: u64,
    /// IKE SAs established, rekeyed ones included.
    pub ike_established: u64,
    /// CHILD SAs installed in the ESP engine.
    pub child_installed: u64,
    /// IKE_AUTH failures: wrong AUTH or identity, or AUTHENTICATION_FAILED received.
    pub auth_failed: u64,
    /// Authenticated peers the policy refused (AUTHENTICATION_FAILED sent).
    pub policy_rejected: u64,
    /// Proposals (or connections) found unacceptable, by us or by the peer.
    pub no_proposal: u64,
    /// Traffic selectors found unacceptable, by us or by the peer.
    pub ts_unacceptable: u64,
    /// Requests the peer never answered, and half-open SAs that timed out.
    pub timeouts: u64,
    /// NAT keepalives sent (RFC 3948 section 2.3).
    pub keepalives: u64,
    /// Liveness checks (empty INFORMATIONAL requests) sent (section 2.4).
    pub dpd_checks: u64,
    /// Established IKE SAs whose peer stopped answering.
    pub dead_peers: u64,
    /// COOKIE notifies sent (section 2.6).
    pub cookies_sent: u64,
    /// Simultaneous CHILD SA rekeys resolved (section 2.8.1), by outcome.
    pub rekey_collisions_won: u64,
    /// Simultaneous CHILD SA rekeys lost: our new CHILD SA was the redundant one.
    pub rekey_collisions_lost: u64,
    /// Simultaneous IKE SA rekeys resolved (section 2.8.2), by outcome.
    pub ike_rekey_collisions_won: u64,
    /// Simultaneous IKE SA rekeys lost: the peer's new IKE SA stays.
    pub ike_rekey_collisions_lost: u64,
    /// Requests answered TEMPORARY_FAILURE (section 2.25).
    pub temporary_failures: u64,
    /// CHILD SAs that reached a soft lifetime (rekey started) or a hard one
    /// (deleted before a rekey replaced them).
    pub lifetime_soft: u64,
    /// CHILD SAs that reached a hard lifetime.
    pub lifetime_hard: u64,
    /// CHILD SAs rekeyed: a new SA replaced an old one (section 2.8).
    pub child_rekeys: u64,
    /// IKE SAs rekeyed (section 2.18).
    pub ike_rekeys: u64,
    /// Reauthentications started.
    pub reauths: u64,
    /// IKE SAs we initiated and deleted as duplicates of another IKE SA with
    /// the same peer for the same connection: a later one of ours, or the
    /// peer's when both ends initiated at once (`sa::duplicates`).
    pub duplicates_deleted: u64,
    /// IKE_SA_INIT requests dropped at the half-open cap.
    pub half_open_drops: u64,
    /// IKE_SA_INIT requests dropped by the per-source rate limit.
    pub rate_limited: u64,
}

/// The negotiation counters of each connection (the host labels metrics
/// with the connection's name). Indexed like the engine's connections;
/// only the fields [`crate::ctx::Ctx::count`] increments are used.
#[derive(Debug, Default)]
pub struct ByConnection {
    stats: Vec<Stats>,
    /// Connections whose counters changed since the last `take_changed`.
    changed: std::collections::BTreeSet<usize>,
}

impl ByConnection {
    /// Add one to `field` of connection `conn`.
    pub fn inc(&mut self, conn: usize, field: fn(&mut Stats) -> &mut u64) {
        if self.stats.len() <= conn {
            self.stats.resize(conn + 1, Stats::default());
        }
        *field(&mut self.stats[conn]) += 1;
        self.changed.insert(conn);
    }

    /// Connection `to` takes over the counters of `from` (a connection
    /// removed and added again by a reload keeps counting where it was).
    pub fn inherit(&mut self, from: usize, to: usize) {
        if let Some(s) = self.stats.get(from).copied() {
            if self.stats.len() <= to {
                self.stats.resize(to + 1, Stats::default());
            }
            self.stats[to] = s;
            self.changed.insert(to);
        }
    }

    /// The counters of connection `conn`.
    pub fn get(&self, conn: usize) -> Stats {
        self.stats.get(conn).copied().unwrap_or_default()
    }

    /// The connections whose counters changed since the last call, with
    /// their counters now.
    pub fn take_changed(&mut self) -> Vec<(usize, Stats)> {
        std::mem::take(&mut self.changed).into_iter().map(|c| (c, self.get(c))).collect()
    }
}
