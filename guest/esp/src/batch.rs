//! The engine's view of packets held by the host.

/// Opaque name of a key in the host keystore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHandle(pub u64);

pub use wasmsec_wire::CryptoError;
/// How many bytes of an IP packet's head the engine reads.
pub use wasmsec_wire::heads::IP_HEAD_LEN;
pub use wasmsec_wire::heads::{ESP_HEAD_LEN, Heads};
use wasmsec_wire::runs;

/// Seal a run of packets of one outbound SA with consecutive sequence
/// numbers: see `seal-run` in `wit/deps/crypto/crypto.wit`. Its packets
/// are the next `count` entries of the [`SealRuns`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealRun {
    /// The host's key to seal with.
    pub key: KeyHandle,
    /// SPI for the ESP headers: the peer's, from the outbound SA.
    pub spi: u32,
    /// The first packet's full sequence number; each next one is one more.
    /// The header carries the low 32 bits, the ICV covers the high ones
    /// with ESN (RFC 4303 section 2.2.1).
    pub first_seq: u64,
    /// Extended sequence numbers.
    pub esn: bool,
    /// How many packets are the run's.
    pub count: u32,
}

impl SealRun {
    /// The full sequence number of the run's `k`th packet.
    pub fn seq(&self, k: usize) -> u64 {
        self.first_seq.wrapping_add(k as u64)
    }

    /// The ESN high half the `k`th packet's ICV covers; None without ESN.
    pub fn esn_high(&self, k: usize) -> Option<u32> {
        self.esn.then(|| (self.seq(k) >> 32) as u32)
    }
}

/// A batch's seal runs, in the shape of the WIT's `seal-runs`: the
/// per-packet values of all runs in flat lists, run after run (the engine
/// builds them as it plans, so the component shell passes them on as they
/// are, and a batch to many SAs costs no list per SA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealRuns {
    pub runs: Vec<SealRun>,
    /// The packets' positions in the batch, each run's in sequence-number
    /// order.
    pub packets: Vec<u32>,
    /// Per packet: padding bytes in the trailer (RFC 4303 section 2.4).
    pub pad_lengths: Vec<u8>,
    /// Per packet: the trailer's Next Header, 4 for IPv4, 41 for IPv6.
    pub next_headers: Vec<u8>,
}

impl SealRuns {
    /// Each run with its packets, pad lengths and next headers. Runs the
    /// lists do not hold in full are cut short.
    pub fn iter(&self) -> impl Iterator<Item = (&SealRun, &[u32], &[u8], &[u8])> {
        let spans = runs::spans(self.runs.iter().map(|r| r.count));
        self.runs.iter().zip(spans).map(|(r, s)| {
            let (pads, nhs) = (runs::share(&self.pad_lengths, &s), runs::share(&self.next_headers, &s));
            (r, runs::share(&self.packets, &s), pads, nhs)
        })
    }
}

/// Open a run of packets under one key: see `open-run` in
/// `wit/deps/crypto/crypto.wit`. Its packets are the next `count` of the
/// [`OpenRuns`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRun {
    /// The host's key to open with.
    pub key: KeyHandle,
    /// Extended sequence numbers: the run's packets have entries in
    /// [`OpenRuns::esn_highs`].
    pub esn: bool,
    /// How many packets are the run's.
    pub count: u32,
}

/// A batch's open runs (the WIT's `open-runs`), flat as [`SealRuns`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenRuns {
    pub runs: Vec<OpenRun>,
    /// The packets' positions in the batch, run after run.
    pub packets: Vec<u32>,
    /// One per packet of the runs with ESN, in order: the high 32 bits of
    /// its inferred sequence number (RFC 4303 appendix A).
    pub esn_highs: Vec<u32>,
}

impl OpenRuns {
    /// Each run with its packets and, with ESN, their high halves (empty
    /// without). Runs the lists do not hold in full are cut short.
    pub fn iter(&self) -> impl Iterator<Item = (&OpenRun, &[u32], &[u32])> {
        let spans = runs::spans(self.runs.iter().map(|r| r.count));
        let esn_spans = runs::spans(self.runs.iter().map(|r| if r.esn { r.count } else { 0 }));
        let spans = spans.zip(esn_spans);
        self.runs
            .iter()
            .zip(spans)
            .map(|(r, (s, e))| (r, runs::share(&self.packets, &s), runs::share(&self.esn_highs, &e)))
    }
}

/// A packet of a run the host did not seal or open, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpFailure {
    /// The packet's position in the batch.
    pub packet: u32,
    pub error: CryptoError,
}

/// What the host says about the packets of the open runs: one entry per
/// packet, runs one after the other (0 for the packets in `failures`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// The trailer's Pad Length field (RFC 4303 section 2.5).
    pub pad_lengths: Vec<u8>,
    /// The trailer's Next Header field (RFC 4303 section 2.6).
    pub next_headers: Vec<u8>,
    /// The packets that did not open, in order.
    pub failures: Vec<OpFailure>,
    /// The heads ([`IP_HEAD_LEN`]) of all the batch's packets after the open.
    pub heads: Heads,
}

/// A batch of packets in host memory with in-place ESP crypto by key
/// handle, one call per batch. The ESP component implements it on the
/// `wasmsec:crypto/packets` imports; native tests and benches directly.
/// The packets' heads come with the batch, as arguments of the engine's
/// `encap` and `decap`.
pub trait PacketBatch {
    /// Seal the runs' packets; the packets that were not sealed, in order.
    fn seal(&mut self, runs: SealRuns) -> Vec<OpFailure>;
    /// Open the runs' packets.
    fn open(&mut self, runs: OpenRuns) -> Opened;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_take_their_share_of_the_flat_lists_in_turn() {
        let run = |count| SealRun { key: KeyHandle(1), spi: 0x100, first_seq: 1, esn: false, count };
        let seal = SealRuns {
            runs: vec![run(1), run(2), run(2)],
            packets: vec![4, 0, 1, 2],
            pad_lengths: vec![9, 8, 7, 6],
            next_headers: vec![4, 41, 4, 41],
        };
        let got: Vec<_> = seal.iter().map(|(r, p, pad, nh)| (r.count, p.to_vec(), pad.to_vec(), nh.to_vec())).collect();
        // The last run names two packets; the lists hold one more.
        assert_eq!(
            got,
            [(1, vec![4], vec![9], vec![4]), (2, vec![0, 1], vec![8, 7], vec![41, 4]), (2, vec![2], vec![6], vec![41])]
        );
        let open = |esn, count| OpenRun { key: KeyHandle(2), esn, count };
        let opens = OpenRuns {
            runs: vec![open(true, 2), open(false, 1), open(true, 1)],
            packets: vec![3, 1, 0, 2],
            esn_highs: vec![7, 8, 9],
        };
        let got: Vec<_> = opens.iter().map(|(_, p, h)| (p.to_vec(), h.to_vec())).collect();
        assert_eq!(got, [(vec![3, 1], vec![7, 8]), (vec![0], vec![]), (vec![2], vec![9])]);
    }
}
