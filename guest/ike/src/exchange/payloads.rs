//! Finding what an exchange needs in a list of payloads.
use wasmsec_wire::ike::{Notify, NotifyType, Payload, Proposal, TrafficSelector as Ts};

pub(crate) fn find_notify(ps: &[Payload], kind: NotifyType) -> Option<&Notify> {
    ps.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind == kind => Some(n),
        _ => None,
    })
}

/// The first error notify (section 3.10.1), if any.
pub(crate) fn first_error(ps: &[Payload]) -> Option<NotifyType> {
    ps.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind.is_error() => Some(n.kind),
        _ => None,
    })
}

/// A notify's data as a big-endian u16 (INVALID_KE_PAYLOAD's group).
pub(crate) fn notify_u16(n: &Notify) -> Option<u16> {
    (n.data.len() == 2).then(|| u16::from_be_bytes([n.data[0], n.data[1]]))
}

pub(crate) fn nonce(ps: &[Payload]) -> Option<Vec<u8>> {
    ps.iter().find_map(|p| match p {
        Payload::Nonce(n) => Some(n.clone()),
        _ => None,
    })
}

pub(crate) fn ke(ps: &[Payload]) -> Option<(u16, &[u8])> {
    ps.iter().find_map(|p| match p {
        Payload::Ke { group, data } => Some((*group, data.as_slice())),
        _ => None,
    })
}

/// An unknown payload marked critical: its type (section 2.5).
pub(crate) fn unknown_critical(ps: &[Payload]) -> Option<u8> {
    ps.iter().find_map(|p| match p {
        Payload::Unknown { kind, critical: true, .. } => Some(kind.raw()),
        _ => None,
    })
}

/// The SA, KE and Nonce payloads of an IKE_SA_INIT message or an IKE rekey.
pub(crate) struct SaKeNonce {
    /// The SA payload's proposals.
    pub proposals: Vec<Proposal>,
    /// The KE payload's DH group number (RFC 7296 section 3.4).
    pub group: u16,
    /// The KE payload's public value.
    pub public: Vec<u8>,
    /// The Nonce payload's data.
    pub nonce: Vec<u8>,
}

pub(crate) fn sa_ke_nonce(ps: &[Payload]) -> Option<SaKeNonce> {
    let (mut sa, mut ke, mut nonce) = (None, None, None);
    for p in ps {
        match p {
            Payload::Sa(props) => sa = Some(props.clone()),
            Payload::Ke { group, data } => ke = Some((*group, data.clone())),
            Payload::Nonce(n) => nonce = Some(n.clone()),
            _ => {}
        }
    }
    let (group, public) = ke?;
    Some(SaKeNonce { proposals: sa?, group, public, nonce: nonce? })
}

/// The SA, TSi and TSr payloads of a CHILD SA request or answer.
pub(crate) fn sa_tsi_tsr(ps: &[Payload]) -> Option<(Vec<Proposal>, Vec<Ts>, Vec<Ts>)> {
    let (mut sa, mut tsi, mut tsr) = (None, None, None);
    for p in ps {
        match p {
            Payload::Sa(x) => sa = Some(x.clone()),
            Payload::TsI(x) => tsi = Some(x.clone()),
            Payload::TsR(x) => tsr = Some(x.clone()),
            _ => {}
        }
    }
    Some((sa?, tsi?, tsr?))
}

/// An ESP SPI (4 bytes on the wire).
pub(crate) fn esp_spi(spi: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(spi.try_into().ok()?))
}
