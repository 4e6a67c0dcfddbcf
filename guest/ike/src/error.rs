//! Why something failed, split the way the peer needs to hear it (as
//! rustls splits its errors): a malformed message gets INVALID_SYNTAX, an
//! unsupported one NO_PROPOSAL_CHOSEN, a refusal the notify it names; a
//! local failure sends nothing. Every variant carries the words the log
//! line needs, naming both sides' values.
use wasmsec_wire::ike::NotifyType;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer's message breaks the format or the protocol (INVALID_SYNTAX).
    #[error("{0}")]
    Malformed(String),
    /// The peer wants something we do not do (NO_PROPOSAL_CHOSEN).
    #[error("{0}")]
    Unsupported(String),
    /// We refuse, and tell the peer with this notify (and its data).
    #[error("{message}")]
    Refused { notify: NotifyType, data: Vec<u8>, message: String },
    /// Something failed here, or the peer refused us: nothing to send.
    #[error("{0}")]
    Failed(String),
    /// A connection's configuration is not usable.
    #[error("{0}")]
    Config(String),
    /// An admin command named a connection we do not have, or one it
    /// cannot act on.
    #[error("{0}")]
    Admin(String),
}

impl Error {
    pub(crate) fn refused(notify: NotifyType, message: impl Into<String>) -> Error {
        Error::Refused { notify, data: Vec::new(), message: message.into() }
    }

    pub(crate) fn failed(message: impl Into<String>) -> Error {
        Error::Failed(message.into())
    }

    /// The notify (type and data) the peer gets for this error, if any.
    pub fn notify(&self) -> Option<(NotifyType, Vec<u8>)> {
        match self {
            Error::Malformed(_) => Some((NotifyType::InvalidSyntax, Vec::new())),
            Error::Unsupported(_) => Some((NotifyType::NoProposalChosen, Vec::new())),
            Error::Refused { notify, data, .. } => Some((*notify, data.clone())),
            Error::Failed(_) | Error::Config(_) | Error::Admin(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_maps_to_the_notify_the_peer_needs() {
        assert_eq!(Error::Malformed("x".into()).notify().unwrap().0, NotifyType::InvalidSyntax);
        assert_eq!(Error::Unsupported("x".into()).notify().unwrap().0, NotifyType::NoProposalChosen);
        assert_eq!(Error::refused(NotifyType::TsUnacceptable, "x").notify().unwrap().0, NotifyType::TsUnacceptable);
        assert_eq!(Error::failed("local").notify(), None);
        assert_eq!(Error::refused(NotifyType::TsUnacceptable, "peer proposed X").to_string(), "peer proposed X");
    }
}
