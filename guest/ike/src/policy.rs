//! The policy question the engine asks its host at IKE_AUTH (the host
//! asks the tenant's policy module), in the engine's own types.
use wasmsec_wire::ike::{Identification, TrafficSelector as Ts};

use crate::output::Endpoint;

/// Asked once the peer's AUTH verified, before the IKE SA is established,
/// in both roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// The connection the peer matched.
    pub connection: String,
    /// The identity the peer proved (IDi, or IDr when we initiated).
    pub peer: Identification,
    pub peer_address: Endpoint,
    pub local_address: Endpoint,
    /// The selectors for the peer's side and for ours: as responder those
    /// the initiator proposed (TSi, TSr), as initiator those the responder
    /// chose (TSr, TSi).
    pub peer_ts: Vec<Ts>,
    pub local_ts: Vec<Ts>,
}

/// What the policy grants an accepted peer, kept with its IKE SA (and
/// carried over to the SAs that rekey it). The default grants what the
/// connection says.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// The tenant it belongs to ("" for the connection's own).
    pub tenant: String,
    /// CHILD SAs are narrowed to these on the peer's side (empty: not
    /// narrowed); intersected with the connection's, never wider.
    pub peer_ts: Vec<Ts>,
    /// ... and on ours.
    pub local_ts: Vec<Ts>,
    /// ESP proposals in place of the connection's, strongSwan syntax ("": the connection's).
    pub esp_proposals: String,
    /// CHILD SA rekey and hard lifetimes in place of the connection's (0: the connection's).
    pub child_rekey_time_ms: u64,
    pub child_life_time_ms: u64,
}

impl Grant {
    /// The proposals for CHILD config `c` of an IKE SA with this grant.
    pub(crate) fn esp(&self, c: &crate::config::Child) -> Result<Vec<crate::proposal::Config>, String> {
        if self.esp_proposals.is_empty() {
            return Ok(c.esp.clone());
        }
        match crate::proposal::parse(&self.esp_proposals, crate::proposal::Kind::Esp) {
            Ok((p, _)) if !p.is_empty() => Ok(p),
            Ok(_) => Err(format!("the policy granted no usable ESP proposal in {:?}", self.esp_proposals)),
            Err(e) => Err(format!("the policy granted ESP proposals {:?} that do not parse: {e}", self.esp_proposals)),
        }
    }

    /// `ts` (already narrowed to the connection's) narrowed to the grant's
    /// `granted` (section 2.9); unchanged if the grant names none.
    pub(crate) fn narrow(ts: &[Ts], granted: &[Ts]) -> Vec<Ts> {
        if granted.is_empty() { ts.to_vec() } else { crate::ts::narrow(ts, granted) }
    }

    /// CHILD config lifetimes `life` with the grant's in their place;
    /// `margin_ms` as for the config (a hard lifetime leaves room for the
    /// rekey's retransmissions).
    pub(crate) fn lifetimes(&self, life: crate::config::Lifetimes, margin_ms: u64) -> crate::config::Lifetimes {
        if self.child_rekey_time_ms == 0 && self.child_life_time_ms == 0 {
            return life;
        }
        let rekey = if self.child_rekey_time_ms > 0 { self.child_rekey_time_ms } else { life.rekey_time };
        let hard = match self.child_life_time_ms {
            h if h > rekey => h,
            _ if rekey > 0 => rekey.saturating_add((rekey / 10).max(margin_ms)),
            h => h,
        };
        crate::config::Lifetimes { rekey_time: rekey, life_time: hard, ..life }
    }
}

/// The host's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead, with what the grant says.
    Accept(Grant),
    /// Refuse: AUTHENTICATION_FAILED to the peer, the reason to the log.
    Reject(String),
}
