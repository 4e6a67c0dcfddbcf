//! The ESP engine's packet batch with identity "crypto", for fuzzing:
//! opening a packet strips the ESP header and an 8-byte IV and checks no
//! ICV, so fuzzed bytes reach the trailer, padding and selector checks.
use wasmsec_esp::{CryptoError, Heads, IP_HEAD_LEN, OpFailure, OpenRuns, Opened, PacketBatch, SealRuns};

/// ESP header and IV in front of the "plaintext".
const FRONT: usize = 16;

/// Packets held as plain vectors.
#[derive(Debug, Default)]
pub struct ClearBatch {
    /// The batch.
    pub packets: Vec<Vec<u8>>,
}

impl ClearBatch {
    /// The heads the host hands over with the batch.
    pub fn heads(&self, head_len: usize) -> Heads {
        Heads::of(head_len, self.packets.iter().map(Vec::as_slice))
    }
}

impl PacketBatch for ClearBatch {
    fn seal(&mut self, runs: SealRuns) -> Vec<OpFailure> {
        let packets = runs.packets.iter();
        packets.map(|&packet| OpFailure { packet, error: CryptoError::Unsupported }).collect()
    }

    fn open(&mut self, runs: OpenRuns) -> Opened {
        let mut o = Opened::default();
        for &i in &runs.packets {
            let (pad, nh) = match self.packets.get_mut(i as usize) {
                Some(p) if p.len() >= FRONT + 2 => {
                    p.drain(..FRONT);
                    let n = p.len();
                    (p[n - 2], p[n - 1])
                }
                _ => {
                    o.failures.push(OpFailure { packet: i, error: CryptoError::BadLength });
                    (0, 0)
                }
            };
            o.pad_lengths.push(pad);
            o.next_headers.push(nh);
        }
        o.heads = self.heads(IP_HEAD_LEN);
        o
    }
}
