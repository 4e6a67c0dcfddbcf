//! The outer header's DSCP and ECN, from the inner packet's (the TOS byte
//! of IPv4, the traffic class of IPv6), and back.
//!
//! - DSCP: copied from the inner header on encapsulation, the default of
//!   RFC 4301 section 5.1.2.1 (`[network] copy_dscp`), so that the
//!   networks between the gateways can give a tunnel's voice and its bulk
//!   traffic the treatment their senders asked for. Decapsulation leaves
//!   the inner DSCP as it is, unless told to copy the outer one in (a
//!   network that re-marks, and whose marks the LAN should see).
//! - ECN: the normal mode of RFC 6040 (section 4.1: the inner field copied
//!   to the outer header; `[network] copy_ecn`, else the compatibility
//!   mode's Not-ECT), and on decapsulation a congestion mark a router set
//!   on the outer header carried to the inner packet (section 4.2), or the
//!   packet dropped where the inner one cannot carry it.
use crate::config::{CopyDscp, Network};
use crate::offload::segment::finish;

/// DSCP: the upper six bits of the byte.
const DSCP: u8 = 0xfc;

/// The TOS byte (IPv4) or traffic class (IPv6) of an inner packet; 0 for
/// anything else.
pub fn of_inner(p: &[u8]) -> u8 {
    match p {
        [b0, b1, ..] if b0 >> 4 == 4 => *b1,
        [b0, b1, ..] if b0 >> 4 == 6 => (b0 << 4) | (b1 >> 4),
        _ => 0,
    }
}

/// ECN: the lower two bits.
const ECN: u8 = 0x03;
const NOT_ECT: u8 = 0;
const ECT1: u8 = 1;
const ECT0: u8 = 2;
const CE: u8 = 3;

/// What is copied between the inner and the outer header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    /// The DSCP, to the outer header on encapsulation.
    pub dscp_out: bool,
    /// The DSCP, to the inner packet on decapsulation.
    pub dscp_in: bool,
    /// The ECN field, to the outer header on encapsulation (RFC 6040
    /// normal mode). Decapsulation always follows RFC 6040.
    pub ecn_out: bool,
}

impl Copy {
    /// As `[network] copy_dscp` and `copy_ecn` say.
    pub fn of(n: &Network) -> Copy {
        Copy::default().with(Override { dscp: Some(n.copy_dscp), ecn: Some(n.copy_ecn) })
    }

    /// This, with what a CHILD SA's child says instead.
    pub fn with(self, o: Override) -> Copy {
        let (dscp_out, dscp_in) = match o.dscp {
            Some(d) => (matches!(d, CopyDscp::Out | CopyDscp::Yes), matches!(d, CopyDscp::In | CopyDscp::Yes)),
            None => (self.dscp_out, self.dscp_in),
        };
        Copy { dscp_out, dscp_in, ecn_out: o.ecn.unwrap_or(self.ecn_out) }
    }
}

impl Default for Copy {
    /// RFC 4301 section 5.1.2.1 and RFC 6040's normal mode: out, not in.
    fn default() -> Copy {
        Copy { dscp_out: true, dscp_in: false, ecn_out: true }
    }
}

/// A child's own `copy_dscp` and `copy_ecn` (`[[connection.children]]`,
/// strongSwan's per-CHILD_SA options), where it sets them; the rest is
/// `[network]`'s. The data path resolves it against the daemon's [`Copy`]
/// when the SA is installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Override {
    pub dscp: Option<CopyDscp>,
    pub ecn: Option<bool>,
}

/// The [`Copy`] of each SA whose child overrides the daemon's, by SPI;
/// the SAs without one (the most, and all where no child sets one) cost
/// nothing here.
#[derive(Debug, Default)]
pub struct BySa {
    daemon: Copy,
    own: std::collections::HashMap<u32, Copy>,
}

impl BySa {
    pub fn new(daemon: Copy) -> BySa {
        BySa { daemon, own: Default::default() }
    }

    /// SA `spi` was installed with its child's `o` (an earlier SA of
    /// that SPI's value, if one was left, does not count).
    pub fn installed(&mut self, spi: u32, o: Override) {
        let c = self.daemon.with(o);
        if c != self.daemon {
            self.own.insert(spi, c);
        } else {
            self.removed(spi);
        }
    }

    /// SA `spi` is gone.
    pub fn removed(&mut self, spi: u32) {
        self.own.remove(&spi);
    }

    /// What SA `spi` copies.
    pub fn of(&self, spi: u32) -> Copy {
        if self.own.is_empty() { self.daemon } else { self.own.get(&spi).copied().unwrap_or(self.daemon) }
    }
}

/// The outer header's TOS byte for an inner packet whose byte is `inner`.
pub fn outer(inner: u8, copy: Copy) -> u8 {
    (if copy.dscp_out { inner & DSCP } else { 0 }) | (if copy.ecn_out { inner & ECN } else { 0 })
}

/// The queueing priority the IP layer gives a datagram sent with this
/// TOS byte (Linux's `rt_tos2priority`: the four RFC 1349 TOS bits pick
/// best effort 0, bulk 2, interactive 6 or interactive bulk 4), which
/// qdiscs such as `pfifo_fast` and `prio` sort by. The packet socket sets
/// it itself (`link_send.rs`), so both send paths queue alike.
pub fn queue_priority(tos: u8) -> u32 {
    const BY_TOS_BITS: [u32; 8] = [0, 0, 2, 2, 6, 6, 4, 4];
    BY_TOS_BITS[usize::from((tos & 0x1e) >> 2)]
}

/// A packet decapsulation must drop: the outer header says CE and the
/// inner packet is not ECN-capable (RFC 6040 section 4.2).
#[derive(Debug, PartialEq, Eq)]
pub struct CeOnNotEct;

/// Carry the outer header's ECN field (`outer`, its TOS byte) to the
/// opened inner packet `p` (RFC 6040 section 4.2, figure 4): CE to an
/// ECN-capable packet, ECT(1) over ECT(0); with `dscp_in`, the outer
/// DSCP too. An IPv4 header's checksum is updated. Everything else stays
/// as it came.
pub fn decap(outer: u8, p: &mut [u8], dscp_in: bool) -> Result<(), CeOnNotEct> {
    let inner = of_inner(p);
    let version = p.first().map_or(0, |b| b >> 4);
    if (version == 4 && p.len() < 20) || (version == 6 && p.len() < 40) {
        // Not a whole IP header (only a guest that breaks its contract
        // delivers one): nothing to mark, nor to check.
        return Ok(());
    }
    let ecn = match (inner & ECN, outer & ECN) {
        (NOT_ECT, CE) => return Err(CeOnNotEct),
        (ECT0, ECT1) => ECT1,
        (NOT_ECT, _) | (CE, _) => inner & ECN,
        (_, CE) => CE,
        (e, _) => e,
    };
    let dscp = if dscp_in { outer & DSCP } else { inner & DSCP };
    let new = dscp | ecn;
    if new == inner {
        return Ok(());
    }
    match version {
        4 => {
            // RFC 1624 equation 3: HC' = ~(~HC + ~m + m'), over the 16-bit
            // word holding the TOS byte.
            let old_word = u16::from_be_bytes([p[0], inner]);
            let new_word = u16::from_be_bytes([p[0], new]);
            let hc = u16::from_be_bytes([p[10], p[11]]);
            let sum = u32::from(!hc) + u32::from(!old_word) + u32::from(new_word);
            p[1] = new;
            p[10..12].copy_from_slice(&finish(sum).to_be_bytes());
        }
        6 => {
            p[0] = (p[0] & 0xf0) | (new >> 4);
            p[1] = (p[1] & 0x0f) | (new << 4);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inner_byte_is_read_from_either_version() {
        // IPv4, DSCP EF (46) and ECT(0).
        assert_eq!(of_inner(&[0x45, 0xba, 0, 20]), 0xba);
        // IPv6: traffic class 0xb9 spans the first two bytes.
        assert_eq!(of_inner(&[0x6b, 0x90, 0, 0]), 0xb9);
        // Too short, or neither version.
        assert_eq!(of_inner(&[0x45]), 0);
        assert_eq!(of_inner(&[0x55, 0xff]), 0);
    }

    #[test]
    fn dscp_and_ecn_are_copied_as_configured() {
        let copy = |dscp_out, ecn_out| Copy { dscp_out, dscp_in: false, ecn_out };
        assert_eq!(outer(0xbb, copy(true, true)), 0xbb);
        assert_eq!(outer(0xbb, copy(true, false)), 0xb8);
        assert_eq!(outer(0xbb, copy(false, true)), 0x03);
        assert_eq!(outer(0xbb, copy(false, false)), 0);
    }

    #[test]
    fn a_childs_own_values_override_the_daemons_for_its_sas_only() {
        let daemon = Copy::default();
        let none = Override::default();
        assert_eq!(daemon.with(none), daemon, "a child that sets nothing copies as [network] says");
        let dscp_in = Override { dscp: Some(CopyDscp::In), ecn: None };
        assert_eq!(daemon.with(dscp_in), Copy { dscp_out: false, dscp_in: true, ecn_out: true });
        let no_ecn = Override { dscp: None, ecn: Some(false) };
        let yes = Copy { dscp_out: true, dscp_in: true, ecn_out: true };
        assert_eq!(yes.with(no_ecn), Copy { ecn_out: false, ..yes }, "the DSCP stays the daemon's");
        let mut by = BySa::new(daemon);
        by.installed(1, dscp_in);
        by.installed(2, none);
        by.installed(3, Override { dscp: Some(CopyDscp::Out), ecn: Some(true) });
        assert_eq!((by.of(1), by.of(2), by.of(3), by.of(9)), (daemon.with(dscp_in), daemon, daemon, daemon));
        assert_eq!(by.own.len(), 1, "only an SA that differs is kept");
        by.installed(3, dscp_in);
        by.installed(3, none);
        assert_eq!(by.of(3), daemon, "the later install of an SPI counts");
        by.removed(1);
        assert_eq!(by.of(1), daemon);
        assert!(by.own.is_empty());
    }

    #[test]
    fn a_packet_shorter_than_its_header_is_left_alone() {
        // DSCP EF outside, copied in: it would be written (into bytes
        // that are not there).
        for short in [vec![0x60u8], vec![0x60, 0x20], vec![0x45, 0x02, 0, 20]] {
            let mut p = short.clone();
            assert_eq!(decap(0xb8, &mut p, true), Ok(()));
            assert_eq!(p, short);
        }
    }

    #[test]
    fn the_outer_dscp_is_copied_in_when_asked() {
        // CS1 outside, AF41 with ECT(0) inside; the outer CE too.
        let mut p = v4(0x8a);
        decap(0x23, &mut p, true).unwrap();
        assert_eq!(p[1], 0x23);
        assert!(wasmsec_wire::ipv4::Packet::new_checked(&p[..]).unwrap().verify_checksum());
        let mut p = v4(0x8a);
        decap(0x20, &mut p, false).unwrap();
        assert_eq!(p[1], 0x8a, "not asked: the inner DSCP stays");
    }

    fn v4(tos: u8) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        wasmsec_wire::ipv4::Repr {
            src_addr: [10, 0, 0, 1],
            dst_addr: [10, 0, 1, 1],
            protocol: 17,
            payload_len: 8,
            ttl: 64,
            dscp_ecn: tos,
        }
        .emit(&mut p)
        .unwrap();
        p
    }

    #[test]
    fn decapsulation_follows_rfc_6040_figure_4() {
        // (inner ECN, outer ECN) -> the inner ECN after, or a drop.
        let table: [(u8, u8, Option<u8>); 16] = [
            (NOT_ECT, NOT_ECT, Some(NOT_ECT)),
            (NOT_ECT, ECT0, Some(NOT_ECT)),
            (NOT_ECT, ECT1, Some(NOT_ECT)),
            (NOT_ECT, CE, None),
            (ECT0, NOT_ECT, Some(ECT0)),
            (ECT0, ECT0, Some(ECT0)),
            (ECT0, ECT1, Some(ECT1)),
            (ECT0, CE, Some(CE)),
            (ECT1, NOT_ECT, Some(ECT1)),
            (ECT1, ECT0, Some(ECT1)),
            (ECT1, ECT1, Some(ECT1)),
            (ECT1, CE, Some(CE)),
            (CE, NOT_ECT, Some(CE)),
            (CE, ECT0, Some(CE)),
            (CE, ECT1, Some(CE)),
            (CE, CE, Some(CE)),
        ];
        for (inner, outer, want) in table {
            // The DSCP (AF41) stays, whatever the outer one is.
            let mut p = v4(0x88 | inner);
            let got = decap(0xb8 | outer, &mut p, false).ok().map(|()| p[1]);
            assert_eq!(got, want.map(|e| 0x88 | e), "inner {inner}, outer {outer}");
            if got.is_some() {
                let ip = wasmsec_wire::ipv4::Packet::new_checked(&p[..]).unwrap();
                assert!(ip.verify_checksum(), "inner {inner}, outer {outer}: checksum updated");
            }
        }
    }

    #[test]
    fn decapsulation_marks_an_ipv6_traffic_class() {
        // Traffic class 0x8a (AF41, ECT(0)), flow label 0x12345.
        let v6 = |head: [u8; 4]| {
            let mut p = [0u8; 40];
            p[..4].copy_from_slice(&head);
            p
        };
        let mut p = v6([0x68, 0xa1, 0x23, 0x45]);
        decap(CE, &mut p, false).unwrap();
        assert_eq!(p[..4], [0x68, 0xb1, 0x23, 0x45]);
        assert_eq!(of_inner(&p), 0x8b);
        let mut not_ect = v6([0x68, 0x81, 0x23, 0x45]);
        assert_eq!(decap(CE, &mut not_ect, false), Err(CeOnNotEct));
        // A runt IPv4 header is left alone; nothing panics on any input.
        let mut runt = [0x45, 0x02, 0];
        assert_eq!(decap(CE, &mut runt, true), Ok(()));
        assert_eq!(runt, [0x45, 0x02, 0]);
        for len in 0..4 {
            let _ = decap(CE, &mut vec![0x60; len], true);
        }
    }

    #[test]
    fn the_queueing_priority_is_the_ip_layers() {
        // What the kernel gave raw IP datagrams with these TOS bytes on
        // this machine (nftables `meta priority`): EF 4, 0 none.
        assert_eq!(queue_priority(0xb8), 4);
        assert_eq!(queue_priority(0xba), 4, "ECN bits do not count");
        assert_eq!(queue_priority(0), 0);
        // RFC 1349: low delay 0x10, throughput 0x08, reliability 0x04.
        assert_eq!(queue_priority(0x10), 6);
        assert_eq!(queue_priority(0x08), 2);
        assert_eq!(queue_priority(0x04), 0);
        assert_eq!(queue_priority(0x18), 4);
    }
}
