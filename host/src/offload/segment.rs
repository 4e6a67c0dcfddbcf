//! Cutting a TUN super-packet into the segments the kernel would have sent
//! (TCP segmentation offload done by us), and finishing partial checksums.
//!
//! With `TUNSETOFFLOAD` granting TSO, the kernel hands the TUN reader one
//! TCP packet of up to 64 KiB with a `virtio_net_hdr` saying "cut me into
//! `gso_size` payloads". Each segment gets a copy of the IP and TCP headers
//! with its own lengths, sequence number, IPv4 ID and checksums, exactly as
//! the kernel's own `tcp_gso_segment` would make them (RFC 9293 §3.1 for
//! the TCP checksum; FIN and PSH only on the last segment, CWR only on the
//! first).
use super::vnet::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, VnetHdr};

/// Why a packet from the TUN device could not be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// A GSO type we did not offer (only TCP over IPv4 and IPv6).
    UnsupportedGso(u8),
    /// Offsets that do not fit the packet.
    Malformed,
}

/// The ones' complement sum of `data` as 16-bit big-endian words, added to
/// `sum` (RFC 1071), not yet folded.
pub fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

/// Fold a sum to 16 bits and complement it: the checksum to store.
pub fn finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A packet read from the TUN device and how far it has been cut.
pub struct Segmenter {
    hdr: VnetHdr,
    /// Bytes of IP + TCP headers copied into every segment.
    headers: usize,
    /// Next payload offset (from `headers`) to cut at.
    next: usize,
    /// Segments already written.
    done: u32,
}

impl Segmenter {
    /// Prepare to cut `pkt` (the bytes after the vnet header) as `hdr` says.
    pub fn new(hdr: VnetHdr, pkt: &[u8]) -> Result<Segmenter, SegmentError> {
        let headers = match hdr.gso() {
            GSO_NONE => 0,
            GSO_TCPV4 | GSO_TCPV6 => {
                // The TCP header starts at csum_start (the kernel sets it
                // for every TSO packet); its data offset gives its length.
                let tcp = usize::from(hdr.csum_start);
                let doff = usize::from(*pkt.get(tcp + 12).ok_or(SegmentError::Malformed)? >> 4) * 4;
                let ip_ok = match pkt.first().map(|b| b >> 4) {
                    // The IPv4 header ends where TCP starts: each segment's
                    // header checksum is taken over the header's IHL words.
                    Some(4) => hdr.gso() == GSO_TCPV4 && tcp >= 20 && usize::from(pkt[0] & 0x0f) * 4 == tcp,
                    Some(6) => hdr.gso() == GSO_TCPV6 && tcp >= 40,
                    _ => false,
                };
                if !ip_ok || doff < 20 || tcp + doff > pkt.len() || hdr.gso_size == 0 {
                    return Err(SegmentError::Malformed);
                }
                tcp + doff
            }
            other => return Err(SegmentError::UnsupportedGso(other)),
        };
        Ok(Segmenter { hdr, headers, next: 0, done: 0 })
    }

    /// Whether every segment has been written.
    pub fn is_done(&self, pkt: &[u8]) -> bool {
        if self.hdr.gso() == GSO_NONE { self.done > 0 } else { self.headers + self.next >= pkt.len() && self.done > 0 }
    }

    /// Write the next segment of `pkt` into `out`; its length, or `None`
    /// when all are written or `out` is too small.
    pub fn next_into(&mut self, pkt: &[u8], out: &mut [u8]) -> Option<usize> {
        if self.is_done(pkt) {
            return None;
        }
        if self.hdr.gso() == GSO_NONE {
            let n = pkt.len();
            let o = out.get_mut(..n)?;
            o.copy_from_slice(pkt);
            if self.hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(o, self.hdr.csum_start.into(), self.hdr.csum_offset.into())?;
            }
            self.done = 1;
            return Some(n);
        }
        let h = self.headers;
        let size = usize::from(self.hdr.gso_size);
        let start = h + self.next;
        let end = (start + size).min(pkt.len());
        let last = end == pkt.len();
        let n = h + (end - start);
        let o = out.get_mut(..n)?;
        o[..h].copy_from_slice(&pkt[..h]);
        o[h..].copy_from_slice(&pkt[start..end]);
        let tcp = usize::from(self.hdr.csum_start);
        self.fix_headers(o, tcp, self.next as u32, last);
        self.next = end - h;
        self.done += 1;
        Some(n)
    }

    /// Lengths, sequence number, flags and checksums of one segment `o`
    /// whose payload starts `offset` bytes into the super-packet's.
    fn fix_headers(&self, o: &mut [u8], tcp: usize, offset: u32, last: bool) {
        let total = o.len();
        let tcp_len = total - tcp;
        let mut pseudo = 0u32;
        if o[0] >> 4 == 4 {
            o[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let id = u16::from_be_bytes([o[4], o[5]]).wrapping_add(self.done as u16);
            o[4..6].copy_from_slice(&id.to_be_bytes());
            o[10..12].fill(0);
            let ihl = usize::from(o[0] & 0x0f) * 4;
            let c = finish(sum_words(0, &o[..ihl]));
            o[10..12].copy_from_slice(&c.to_be_bytes());
            pseudo = sum_words(pseudo, &o[12..20]);
        } else {
            o[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            pseudo = sum_words(pseudo, &o[8..40]);
        }
        pseudo = pseudo.wrapping_add(6).wrapping_add(tcp_len as u32);
        let seq = u32::from_be_bytes([o[tcp + 4], o[tcp + 5], o[tcp + 6], o[tcp + 7]]).wrapping_add(offset);
        o[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
        const FIN: u8 = 0x01;
        const PSH: u8 = 0x08;
        const CWR: u8 = 0x80;
        if !last {
            o[tcp + 13] &= !(FIN | PSH);
        }
        if self.done > 0 {
            o[tcp + 13] &= !CWR;
        }
        o[tcp + 16..tcp + 18].fill(0);
        let c = finish(sum_words(pseudo, &o[tcp..]));
        o[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
    }
}

/// Finish a partial checksum: the field at `start + offset` holds the
/// pseudo-header sum; sum everything from `start` and store the result.
pub fn complete_checksum(p: &mut [u8], start: usize, offset: usize) -> Option<()> {
    if start + offset + 2 > p.len() {
        return None;
    }
    let c = finish(sum_words(0, &p[start..]));
    p[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
    Some(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::offload::vnet::F_NEEDS_CSUM;

    /// The header fields the offload tests vary between their packets.
    pub(crate) struct Shape<'a> {
        pub(crate) ip_id: u16,
        pub(crate) dont_fragment: bool,
        pub(crate) ack: u32,
        /// TCP options, a multiple of 4 bytes.
        pub(crate) opts: &'a [u8],
    }

    /// An IPv4/TCP packet with `payload`, checksums valid.
    pub(crate) fn tcp4(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let shape = Shape { ip_id: 0x1234, dont_fragment: false, ack: 0, opts: &[] };
        tcp4_shaped(seq, flags, &shape, payload)
    }

    /// An IPv4/TCP packet of the given `shape` with `payload`, checksums valid.
    pub(crate) fn tcp4_shaped(seq: u32, flags: u8, shape: &Shape, payload: &[u8]) -> Vec<u8> {
        let h = 40 + shape.opts.len();
        let mut p = vec![0u8; h];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((h + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&shape.ip_id.to_be_bytes());
        if shape.dont_fragment {
            p[6] = 0x40;
        }
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[198, 18, 1, 10]);
        p[16..20].copy_from_slice(&[198, 18, 2, 10]);
        p[20..22].copy_from_slice(&5201u16.to_be_bytes());
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&shape.ack.to_be_bytes());
        p[32] = (((20 + shape.opts.len()) / 4) << 4) as u8;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p[40..h].copy_from_slice(shape.opts);
        p.extend_from_slice(payload);
        let c = finish(sum_words(0, &p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let tcp_len = p.len() - 20;
        let pseudo = sum_words(0, &p[12..20]).wrapping_add(6 + tcp_len as u32);
        let c = finish(sum_words(pseudo, &p[20..]));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn valid(p: &[u8]) -> bool {
        let tcp_len = p.len() - 20;
        let pseudo = sum_words(0, &p[12..20]).wrapping_add(6 + tcp_len as u32);
        finish(sum_words(0, &p[..20])) == 0 && finish(sum_words(pseudo, &p[20..])) == 0
    }

    fn cut(hdr: VnetHdr, pkt: &[u8]) -> Vec<Vec<u8>> {
        let mut s = Segmenter::new(hdr, pkt).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2000];
        while let Some(n) = s.next_into(pkt, &mut buf) {
            out.push(buf[..n].to_vec());
        }
        assert!(s.is_done(pkt));
        out
    }

    #[test]
    fn a_tso_packet_becomes_the_segments_the_kernel_would_send() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let sup = tcp4(1000, 0x18 | 0x80 | 0x01, &payload); // PSH ACK CWR FIN
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let segs = cut(hdr, &sup);
        assert_eq!(segs.iter().map(Vec::len).collect::<Vec<_>>(), [1440, 1440, 240]);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(valid(s), "segment {i} has a bad checksum");
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16, "IPv4 ID");
            assert_eq!(u32::from_be_bytes([s[24], s[25], s[26], s[27]]), 1000 + 1400 * i as u32);
            let last = i == segs.len() - 1;
            assert_eq!(s[33] & 0x09 != 0, last, "FIN/PSH only on the last");
            assert_eq!(s[33] & 0x80 != 0, i == 0, "CWR only on the first");
            assert_eq!(s[33] & 0x10, 0x10, "ACK on all");
            joined.extend_from_slice(&s[40..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn a_partial_checksum_is_finished() {
        let good = tcp4(7, 0x10, b"hello, world");
        let mut partial = good.clone();
        // What the kernel leaves with CHECKSUM_PARTIAL: the pseudo-header sum
        // (folded, not complemented) in the field.
        let pseudo = sum_words(0, &good[12..20]).wrapping_add(6 + (good.len() - 20) as u32);
        partial[36..38].copy_from_slice(&(!finish(pseudo)).to_be_bytes());
        let hdr = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 16, ..VnetHdr::default() };
        assert_eq!(cut(hdr, &partial), std::slice::from_ref(&good));
        // Without the flag the packet passes untouched.
        assert_eq!(cut(VnetHdr::default(), &good), [good]);
    }

    #[test]
    fn what_cannot_be_cut_is_refused() {
        let sup = tcp4(1, 0x10, &[0u8; 100]);
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 50, csum_start: 20, csum_offset: 16, ..VnetHdr::default() };
        assert!(Segmenter::new(VnetHdr { gso_type: 3, ..hdr }, &sup).is_err(), "UFO was not offered");
        assert!(Segmenter::new(VnetHdr { gso_type: GSO_TCPV6, ..hdr }, &sup).is_err(), "IPv4 packet, v6 type");
        assert!(Segmenter::new(VnetHdr { csum_start: 200, ..hdr }, &sup).is_err());
        assert!(Segmenter::new(VnetHdr { gso_size: 0, ..hdr }, &sup).is_err());
        // An IPv4 header longer (IHL 15) than where TCP is said to start.
        let mut long_ihl = sup.clone();
        long_ihl[0] = 0x4f;
        assert!(Segmenter::new(hdr, &long_ihl).is_err(), "IHL and csum_start disagree");
        // An output buffer too small for a segment ends the cut, no panic.
        let mut s = Segmenter::new(hdr, &sup).unwrap();
        assert_eq!(s.next_into(&sup, &mut [0u8; 60]), None);
    }
}
