//! The `virtio_net_hdr` a TUN device opened with `IFF_VNET_HDR` puts in
//! front of every packet (Linux `include/uapi/linux/virtio_net.h`): whether
//! the packet is a GSO super-packet to be cut into segments of `gso_size`,
//! and whether its transport checksum is still partial.
//!
//! TUN uses the host's byte order for the 16-bit fields unless
//! `TUNSETVNETLE` says otherwise; this host is little-endian only
//! (x86_64, aarch64), which `LEN`'s users rely on.

/// Size of the header without `num_buffers` (what `TUNSETVNETHDRSZ` sets).
pub const LEN: usize = 10;

/// `flags`: the transport checksum at `csum_start + csum_offset` holds only
/// the pseudo-header sum; the rest is ours to add.
pub const F_NEEDS_CSUM: u8 = 1;

/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// Set together with a TCP type when the segments carry ECN's CWR.
pub const GSO_ECN: u8 = 0x80;

/// One parsed header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Bytes of headers (IP + TCP) in front of the payload.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed area starts (the transport header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header in front of `b`, or `None` if `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let h = b.get(..LEN)?;
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        Some(VnetHdr {
            flags: h[0],
            gso_type: h[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Write the header into the first `LEN` bytes of `b`.
    pub fn emit(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// The GSO type without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; LEN];
        h.emit(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(h.gso(), GSO_TCPV4);
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }
}
