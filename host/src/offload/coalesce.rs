//! The reverse of [`super::segment`]: consecutive TCP segments of one
//! flow, as the inbound path opens them, joined into one super-packet that
//! is written to the TUN device behind a TSO4 `virtio_net_hdr`, so one
//! write carries up to 64 KiB instead of one MTU. The kernel then treats
//! it as it treats what its own GRO joined: delivered whole to a local
//! socket, or cut again by TSO or GSO on the way out.
//!
//! What may join follows Linux's `tcp_gro_receive`: IPv4 without options
//! or fragments, the same addresses, ports, TTL, TOS, DF, ACK, window and
//! TCP options byte for byte, sequence numbers back to back, only ACK and
//! PSH set, every segment but the last of the same size (the last may be
//! shorter, and ends the run, as does PSH). Only packets next to each
//! other in the batch join, so nothing is reordered.
use super::segment::{finish, sum_words};
use super::vnet::{F_NEEDS_CSUM, GSO_TCPV4, VnetHdr};

/// Largest super-packet (the IPv4 total length field).
const MAX_LEN: usize = 65_535;
/// Most segments joined (Linux's `MAX_GRO_SKBS` is 8 per flow list;
/// the kernel cuts at most 64 KiB anyway, this only bounds the work).
const MAX_SEGMENTS: usize = 64;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// The run being joined.
#[derive(Default)]
pub struct Joiner {
    /// The first segment whole, then the payloads of those that joined.
    buf: Vec<u8>,
    /// Bytes of IPv4 + TCP headers.
    headers: usize,
    /// Payload bytes of the first segment: every one but the last has as many.
    mss: usize,
    /// Segments in `buf`.
    segments: usize,
    /// The sequence number the next segment must have.
    next_seq: u32,
    /// A shorter segment or PSH joined: nothing more may.
    closed: bool,
    /// PSH was set on a joined segment.
    psh: bool,
}

/// The IPv4/TCP facts of a segment that may join a run.
struct Seg {
    /// IPv4 + TCP header bytes.
    headers: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

/// `p` as a segment that may join or start a run, or `None` (anything
/// else is written as it is).
fn segment(p: &[u8]) -> Option<Seg> {
    if p.len() < 40 || p[0] != 0x45 || p[9] != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    // Not a fragment: MF clear, offset zero (DF may be set).
    if total != p.len() || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    let doff = usize::from(p[32] >> 4) * 4;
    let flags = p[33];
    if doff < 20 || 20 + doff >= p.len() || flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
        return None;
    }
    let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
    Some(Seg { headers: 20 + doff, seq, flags, payload: p.len() - 20 - doff })
}

impl Joiner {
    /// Nothing is being joined.
    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// Start a run with `p`; false if `p` cannot start one (write it as it is).
    pub fn start(&mut self, p: &[u8]) -> bool {
        debug_assert!(self.is_empty());
        let Some(s) = segment(p) else { return false };
        self.buf.clear();
        self.buf.extend_from_slice(p);
        self.headers = s.headers;
        self.mss = s.payload;
        self.segments = 1;
        self.next_seq = s.seq.wrapping_add(s.payload as u32);
        self.psh = s.flags & PSH != 0;
        self.closed = self.psh;
        true
    }

    /// Join `p` to the run if it may (see the module's rules); false if not.
    pub fn join(&mut self, p: &[u8]) -> bool {
        if self.is_empty() || self.closed || self.segments >= MAX_SEGMENTS {
            return false;
        }
        let Some(s) = segment(p) else { return false };
        let first = &self.buf;
        let h = self.headers;
        let same = s.headers == h
            && s.seq == self.next_seq
            && s.payload <= self.mss
            && self.buf.len() + s.payload <= MAX_LEN
            // TOS; DF; TTL and protocol; addresses; ports; ACK; (flags
            // apart) data offset and window; options.
            && p[1] == first[1]
            && p[6] & 0x40 == first[6] & 0x40
            && p[8..10] == first[8..10]
            && p[12..24] == first[12..24]
            && p[28..33] == first[28..33]
            && p[34..36] == first[34..36]
            && p[40..h] == first[40..h];
        if !same {
            return false;
        }
        self.buf.extend_from_slice(&p[h..]);
        self.segments += 1;
        self.next_seq = s.seq.wrapping_add(s.payload as u32);
        self.psh |= s.flags & PSH != 0;
        self.closed = s.payload < self.mss || self.psh;
        true
    }

    /// Segments in the run.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// End the run: the packet to write and its `virtio_net_hdr` (all
    /// zero for a single segment, which is written as it came). The
    /// joiner is empty again once the caller has written it
    /// ([`Joiner::clear`]).
    pub fn finish(&mut self) -> (VnetHdr, &[u8]) {
        if self.segments < 2 {
            return (VnetHdr::default(), &self.buf);
        }
        let (p, h) = (&mut self.buf, self.headers);
        let total = p.len();
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[10..12].fill(0);
        let c = finish(sum_words(0, &p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        if self.psh {
            p[33] |= PSH;
        }
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the
        // kernel (or whoever cuts it) adds the rest.
        let tcp_len = (total - 20) as u32;
        let pseudo = sum_words(0, &p[12..20]).wrapping_add(6 + tcp_len);
        p[36..38].copy_from_slice(&(!finish(pseudo)).to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: h as u16,
            gso_size: self.mss as u16,
            csum_start: 20,
            csum_offset: 16,
        };
        (hdr, &self.buf)
    }

    /// Forget the run (after it was written).
    pub fn clear(&mut self) {
        self.segments = 0;
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::segment::tests::{Shape, tcp4_shaped};
    use crate::offload::segment::{Segmenter, complete_checksum};

    /// An IPv4/TCP packet as a sender with DF set would emit it (IP ID
    /// stepping with the sequence), `opts` after the 20-byte TCP header.
    fn tcp4(seq: u32, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
        let shape = Shape { ip_id: seq as u16, dont_fragment: true, ack: 77, opts };
        tcp4_shaped(seq, flags, &shape, payload)
    }

    fn payload(n: usize, k: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(7) ^ k).collect()
    }

    #[test]
    fn joined_then_cut_gives_back_the_same_segments() {
        let ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamps
        let segs: Vec<Vec<u8>> = (0..5u32)
            .map(|i| {
                let len = if i == 4 { 300 } else { 1000 };
                let flags = if i == 4 { ACK | PSH } else { ACK };
                tcp4(1000 + i * 1000, flags, &ts, &payload(len, i as u8))
            })
            .collect();
        let mut j = Joiner::default();
        assert!(j.start(&segs[0]));
        for s in &segs[1..] {
            assert!(j.join(s));
        }
        assert_eq!(j.segments(), 5);
        let (hdr, sup) = j.finish();
        let sup = sup.to_vec();
        assert_eq!((hdr.gso_type, hdr.gso_size, hdr.hdr_len), (GSO_TCPV4, 1000, 52));
        // The kernel's view: completing the partial checksum gives a valid one.
        let mut whole = sup.clone();
        complete_checksum(&mut whole, 20, 16).unwrap();
        let pseudo = sum_words(0, &whole[12..20]).wrapping_add(6 + (whole.len() - 20) as u32);
        assert_eq!(finish(sum_words(pseudo, &whole[20..])), 0, "valid TCP checksum once completed");
        assert_eq!(finish(sum_words(0, &whole[..20])), 0, "valid IPv4 header checksum");
        // Cut again as TSO would: the original segments, byte for byte but
        // for the IP ID (the kernel numbers them from the first).
        let mut cut = Segmenter::new(hdr, &sup).unwrap();
        let mut out = vec![0u8; 2000];
        for (i, s) in segs.iter().enumerate() {
            let n = cut.next_into(&sup, &mut out).unwrap();
            let mut want = s.clone();
            let mut got = out[..n].to_vec();
            want[4..6].fill(0);
            got[4..6].fill(0);
            want[10..12].fill(0);
            got[10..12].fill(0);
            assert_eq!(got, want, "segment {i}");
        }
        assert!(cut.next_into(&sup, &mut out).is_none());
    }

    #[test]
    fn what_must_not_join_stays_apart() {
        let seg = |seq: u32, flags: u8, len: usize| tcp4(seq, flags, &[], &payload(len, 1));
        let mut j = Joiner::default();
        assert!(j.start(&seg(0, ACK, 1000)));
        assert!(!j.join(&seg(2000, ACK, 1000)), "a gap in the sequence");
        assert!(!j.join(&seg(1000, ACK | 0x01, 1000)), "FIN");
        assert!(!j.join(&seg(1000, ACK, 1200)), "longer than the first");
        let mut other_port = seg(1000, ACK, 1000);
        other_port[21] ^= 1;
        assert!(!j.join(&other_port), "another flow");
        let mut other_ack = seg(1000, ACK, 1000);
        other_ack[31] ^= 1;
        assert!(!j.join(&other_ack), "another ACK number");
        assert!(j.join(&seg(1000, ACK, 500)), "a shorter one joins as the last");
        assert!(!j.join(&seg(1500, ACK, 500)), "... and ends the run");
        let (hdr, p) = j.finish();
        assert_eq!((hdr.gso_size, p.len()), (1000, 40 + 1500));
        j.clear();
        assert!(!j.start(&seg(0, 0x02, 0)), "SYN starts nothing");
        assert!(!j.start(&seg(0, ACK, 0)), "nor a bare ACK");
        let mut frag = seg(0, ACK, 100);
        frag[6] = 0x20;
        assert!(!j.start(&frag), "nor a fragment");
        assert!(j.start(&seg(0, ACK | PSH, 100)));
        assert!(!j.join(&seg(100, ACK, 100)), "PSH ends a run");
        let (hdr, p) = j.finish();
        assert_eq!((hdr, p.len()), (VnetHdr::default(), 140), "one segment goes as it came");
    }
}
