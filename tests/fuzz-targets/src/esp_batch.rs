//! The ESP engine's packet batch with identity "crypto", for fuzzing:
//! opening a packet strips the ESP header and an 8-byte IV and checks no
//! ICV, so fuzzed bytes reach the trailer, padding and selector checks.
use wasmsec_esp::{CryptoError, Heads, OpenOp, Opened, PacketBatch, SealOp};

/// ESP header and IV in front of the "plaintext".
const FRONT: usize = 16;

/// Packets held as plain vectors.
#[derive(Debug, Default)]
pub struct ClearBatch {
    /// The batch.
    pub packets: Vec<Vec<u8>>,
}

impl PacketBatch for ClearBatch {
    fn count(&self) -> u32 {
        self.packets.len() as u32
    }

    fn heads(&self, head_len: usize) -> Heads {
        Heads::of(head_len, self.packets.iter().map(Vec::as_slice))
    }

    fn seal(&mut self, ops: &[SealOp], out: &mut Vec<Result<(), CryptoError>>) {
        out.extend(ops.iter().map(|_| Err(CryptoError::Unsupported)));
    }

    fn open(&mut self, ops: &[OpenOp], out: &mut Vec<Result<Opened, CryptoError>>) {
        for op in ops {
            let r = match self.packets.get_mut(op.index as usize) {
                Some(p) if p.len() >= FRONT + 2 => {
                    p.drain(..FRONT);
                    let n = p.len();
                    Ok(Opened { plaintext_len: n, pad_length: p[n - 2], next_header: p[n - 1] })
                }
                Some(_) => Err(CryptoError::BadLength),
                None => Err(CryptoError::BadLength),
            };
            out.push(r);
        }
    }
}
