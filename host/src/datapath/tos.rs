//! The outer header's DSCP and ECN, from the inner packet's (the TOS byte
//! of IPv4, the traffic class of IPv6).
//!
//! - DSCP: copied from the inner header on encapsulation, the default of
//!   RFC 4301 section 5.1.2.1 (`[network] copy_dscp`), so that the
//!   networks between the gateways can give a tunnel's voice and its bulk
//!   traffic the treatment their senders asked for.
//! - ECN: cleared in the outer header, the compatibility mode of RFC 6040
//!   section 4.1, since the decapsulation does not yet carry a congestion
//!   mark from the outer header to the inner one (section 4.2). Copying
//!   ECN out without that would turn the drops a congested router makes of
//!   Not-ECT packets into marks nobody sees.

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

/// The outer header's TOS byte for an inner packet whose byte is `inner`.
pub fn outer(inner: u8, copy_dscp: bool) -> u8 {
    if copy_dscp { inner & DSCP } else { 0 }
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
    fn dscp_is_copied_and_ecn_is_not() {
        assert_eq!(outer(0xbb, true), 0xb8);
        assert_eq!(outer(0x03, true), 0);
        assert_eq!(outer(0xbb, false), 0);
    }
}
