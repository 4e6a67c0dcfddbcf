//! What an exchange may touch while it works on one IKE SA: the time, the
//! host's crypto, the connections, the other IKE SAs, the responder's
//! defences, the output queues and the counters. The IKE SA itself is
//! lent separately (see `Engine::with_sa`), so no handler needs the whole
//! engine and an owned SA at once.

use wasmsec_wire::ike::NotifyType;

use crate::config::Timing;
use crate::connections::Connections;
use crate::crypto::IkeCrypto;
use crate::dos::Dos;
use crate::output::{Datagram, Event, Level, Output, Transmit};
use crate::proposal::Kind;
use crate::sa::state::IkeSa;
use crate::stats::{ByConnection, Stats};

/// Every IKE SA by our SPI.
pub(crate) use crate::sa::table::SaTable;

/// What a handler may use besides the IKE SA it works on (see the module doc).
pub(crate) struct Ctx<'a> {
    /// The current time, in engine milliseconds.
    pub now: u64,
    /// The host's keystore and IKE crypto.
    pub crypto: &'a mut dyn IkeCrypto,
    /// The configured connections; an IKE SA's `conn` indexes them.
    pub conns: &'a Connections,
    /// Every IKE SA but the one being worked on.
    pub sas: &'a mut SaTable,
    /// The responder's IKE_SA_INIT flood defences.
    pub dos: &'a mut Dos,
    /// Queues of datagrams, SA changes and events for the host.
    pub out: &'a mut Output,
    /// The engine's counters.
    pub stats: &'a mut Stats,
    /// The negotiation counters by connection.
    pub by_conn: &'a mut ByConnection,
    /// Retransmission and timeout settings.
    pub timing: &'a Timing,
}

/// What becomes of the IKE SA a handler worked on.
#[derive(Debug)]
pub(crate) enum Fate {
    Keep,
    /// Forget it (and its CHILD SAs), logging why.
    Drop(String),
    /// Forget it, then initiate its connection again (dead peer, `dpd_action = restart`).
    Restart(String),
}

impl Ctx<'_> {
    pub fn log(&mut self, level: Level, conn: usize, message: String) {
        let name = self.conns.get(conn).map_or("", |c| c.cfg.name.as_str());
        self.out.log(level, name, message);
    }

    pub fn info(&mut self, conn: usize, message: String) {
        self.log(Level::Info, conn, message);
    }

    pub fn warn(&mut self, conn: usize, message: String) {
        self.log(Level::Warn, conn, message);
    }

    /// Count a negotiation event of connection `conn`: in the engine's
    /// totals and in the connection's own counters.
    pub fn count(&mut self, conn: usize, field: fn(&mut Stats) -> &mut u64) {
        *field(self.stats) += 1;
        self.by_conn.inc(conn, field);
    }

    pub fn emit(&mut self, d: Datagram) {
        self.stats.tx += 1;
        self.out.transmits.push_back(Transmit::Datagram(d));
    }

    pub fn random_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.crypto.random(&mut b);
        u64::from_be_bytes(b)
    }

    /// A new IKE SPI of ours, not zero and not in use.
    pub fn new_spi(&mut self) -> u64 {
        loop {
            let s = self.random_u64();
            if s != 0 && !self.sas.contains_key(&s) {
                return s;
            }
        }
    }

    /// A new ESP SPI of ours: above the reserved 0-255, and recognisably
    /// ours in captures (high bits set, [`wasmsec_wire::esp::IKE_SPI_BITS`],
    /// a range the config keeps manual tunnels' inbound SPIs out of).
    /// Not in use by any CHILD SA, installed or being negotiated, of any
    /// IKE SA (`current` is the one being handled, which may be out of the
    /// table meanwhile): an SPI names one inbound SA (RFC 4301 section
    /// 4.1), and 30 random bits repeat after some tens of thousands of SAs.
    /// A lookup, not a pass over the SAs (`sa::lookups`).
    pub fn new_esp_spi(&mut self, current: &IkeSa) -> u32 {
        loop {
            let mut b = [0u8; 4];
            self.crypto.random(&mut b);
            let spi = u32::from_be_bytes(b) | wasmsec_wire::esp::IKE_SPI_BITS;
            if !current.uses_esp_spi(spi) && !self.sas.esp_spi_in_use(spi) {
                return spi;
            }
        }
    }

    /// A new inbound ESP SPI for a request we send (IKE_AUTH or
    /// CREATE_CHILD_SA as initiator): the data plane is told to expect it
    /// (see [`crate::output::SaChange::ExpectInbound`]).
    pub fn new_requested_esp_spi(&mut self, current: &IkeSa) -> u32 {
        let spi = self.new_esp_spi(current);
        self.out.sa_changes.push_back(crate::output::SaChange::ExpectInbound { inbound_spi: spi });
        spi
    }

    pub fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; 32];
        self.crypto.random(&mut n);
        n
    }

    /// How long to wait before retrying a rekey that failed or met a
    /// TEMPORARY_FAILURE: a tenth of the rekey interval (at least a second),
    /// plus up to half that again at random so both ends do not retry in
    /// step (section 2.25).
    pub fn retry_delay(&mut self, interval: u64) -> u64 {
        let base = (interval / 10).max(1000);
        let mut r = [0u8; 4];
        self.crypto.random(&mut r);
        base + u64::from(u32::from_be_bytes(r)) % (base / 2 + 1)
    }

    pub fn retransmit_span(&self) -> u64 {
        self.timing.retransmit_span()
    }

    /// `rekeyed`: it replaces an IKE SA by a rekey (section 1.3.2).
    pub fn ike_up(&mut self, sa: &IkeSa, rekeyed: bool) {
        self.out.events.push_back(Event::IkeUp {
            rekeyed,
            connection: self.conns[sa.conn].cfg.name.clone(),
            ike_spi: sa.our_spi(),
            proposal: sa.suite.map(|s| s.name(Kind::Ike)).unwrap_or_default(),
            initiator: sa.initiator,
            local: sa.local,
            remote: sa.remote,
            nat_local: sa.nat_local,
            nat_remote: sa.nat_remote,
            remote_id: crate::identity::show_body(&sa.peer_id),
        });
    }

    /// Another established IKE SA of connection `conn` with the peer that
    /// authenticated as `peer_id` (an ID payload's body), wherever it is.
    pub fn has_twin(&mut self, conn: usize, peer_id: &[u8]) -> bool {
        !peer_id.is_empty() && !self.sas.with_identity(conn, peer_id, IkeSa::established).is_empty()
    }
}

/// A rekey or lifetime less up to 10 %, so that SAs created together (and
/// the two ends of a tunnel with the same setting) do not all act at once.
/// The random SPI is the source of the spread.
pub(crate) fn jittered(t: u64, spi: u64) -> u64 {
    let spread = t / 10;
    if spread == 0 { t } else { t - (spi.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % spread }
}

/// A notify's name for logs (its number if it has none).
pub(crate) fn notify_name(n: NotifyType) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::jittered;

    #[test]
    fn rekey_jitter_stays_within_ten_percent_and_spreads() {
        let times: Vec<u64> = (1..200u64).map(|spi| jittered(3_600_000, spi * 7919)).collect();
        assert!(times.iter().all(|t| (3_240_001..=3_600_000).contains(t)));
        let mut distinct = times.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 150, "spread: {}", distinct.len());
        assert_eq!(jittered(5, 12345), 5);
    }
}
