//! IANA's IKEv2 registries (RFC 7296 section 3, "Internet Key Exchange
//! Version 2 (IKEv2) Parameters") as open enums: every value from the wire
//! converts, and the ones without a name here stay as `Unknown(n)`. Nothing
//! is refused for being unknown; the engine decides what the RFC requires
//! (section 2.5: only a critical payload it does not know is an error).

/// An open enum over a registry: named values, and `Unknown(n)` for the rest.
/// `From<raw>` never produces `Unknown` for a named value.
macro_rules! registry {
    ($(#[$m:meta])* $name:ident($raw:ty) { $($(#[$vm:meta])* $var:ident = $val:literal => $text:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* $var,)*
            /// A value without a name here (kept, never refused for that alone).
            Unknown($raw),
        }

        impl From<$raw> for $name {
            fn from(v: $raw) -> Self {
                match v {
                    $($val => $name::$var,)*
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for $raw {
            fn from(v: $name) -> $raw {
                match v {
                    $($name::$var => $val,)*
                    $name::Unknown(other) => other,
                }
            }
        }

        impl $name {
            /// The value on the wire.
            pub fn raw(self) -> $raw {
                self.into()
            }

            /// IANA's name, if it has one here.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $($name::$var => Some($text),)*
                    $name::Unknown(_) => None,
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.raw()),
                }
            }
        }
    };
}

registry! {
    /// Exchange types (section 3.1).
    ExchangeType(u8) {
        IkeSaInit = 34 => "IKE_SA_INIT",
        IkeAuth = 35 => "IKE_AUTH",
        CreateChildSa = 36 => "CREATE_CHILD_SA",
        Informational = 37 => "INFORMATIONAL",
    }
}

registry! {
    /// Payload types (section 3.2).
    PayloadType(u8) {
        None = 0 => "none",
        Sa = 33 => "SA",
        Ke = 34 => "KE",
        IdI = 35 => "IDi",
        IdR = 36 => "IDr",
        Cert = 37 => "CERT",
        CertReq = 38 => "CERTREQ",
        Auth = 39 => "AUTH",
        Nonce = 40 => "Nonce",
        Notify = 41 => "Notify",
        Delete = 42 => "Delete",
        Vendor = 43 => "Vendor ID",
        TsI = 44 => "TSi",
        TsR = 45 => "TSr",
        Sk = 46 => "SK",
        Cp = 47 => "CP",
        Eap = 48 => "EAP",
        Skf = 53 => "SKF",
    }
}

registry! {
    /// Notify message types (section 3.10.1). Below 16384 they are errors.
    NotifyType(u16) {
        UnsupportedCriticalPayload = 1 => "UNSUPPORTED_CRITICAL_PAYLOAD",
        InvalidIkeSpi = 4 => "INVALID_IKE_SPI",
        InvalidMajorVersion = 5 => "INVALID_MAJOR_VERSION",
        InvalidSyntax = 7 => "INVALID_SYNTAX",
        InvalidMessageId = 9 => "INVALID_MESSAGE_ID",
        InvalidSpi = 11 => "INVALID_SPI",
        NoProposalChosen = 14 => "NO_PROPOSAL_CHOSEN",
        InvalidKePayload = 17 => "INVALID_KE_PAYLOAD",
        AuthenticationFailed = 24 => "AUTHENTICATION_FAILED",
        SinglePairRequired = 34 => "SINGLE_PAIR_REQUIRED",
        NoAdditionalSas = 35 => "NO_ADDITIONAL_SAS",
        InternalAddressFailure = 36 => "INTERNAL_ADDRESS_FAILURE",
        FailedCpRequired = 37 => "FAILED_CP_REQUIRED",
        TsUnacceptable = 38 => "TS_UNACCEPTABLE",
        InvalidSelectors = 39 => "INVALID_SELECTORS",
        TemporaryFailure = 43 => "TEMPORARY_FAILURE",
        ChildSaNotFound = 44 => "CHILD_SA_NOT_FOUND",
        InitialContact = 16384 => "INITIAL_CONTACT",
        NatDetectionSourceIp = 16388 => "NAT_DETECTION_SOURCE_IP",
        NatDetectionDestinationIp = 16389 => "NAT_DETECTION_DESTINATION_IP",
        Cookie = 16390 => "COOKIE",
        UseTransportMode = 16391 => "USE_TRANSPORT_MODE",
        RekeySa = 16393 => "REKEY_SA",
        EspTfcPaddingNotSupported = 16394 => "ESP_TFC_PADDING_NOT_SUPPORTED",
        MobikeSupported = 16396 => "MOBIKE_SUPPORTED",
        /// RFC 4478: seconds until the responder wants a reauthentication.
        AuthLifetime = 16403 => "AUTH_LIFETIME",
        FragmentationSupported = 16430 => "IKEV2_FRAGMENTATION_SUPPORTED",
        SignatureHashAlgorithms = 16431 => "SIGNATURE_HASH_ALGORITHMS",
    }
}

impl NotifyType {
    /// Error types are below 16384 (section 3.10.1).
    pub fn is_error(self) -> bool {
        self.raw() < 16384
    }
}

registry! {
    /// Security protocol IDs (section 3.3.1).
    ProtocolId(u8) {
        None = 0 => "none",
        Ike = 1 => "IKE",
        Ah = 2 => "AH",
        Esp = 3 => "ESP",
    }
}

registry! {
    /// Transform types (section 3.3.2).
    TransformType(u8) {
        Encr = 1 => "ENCR",
        Prf = 2 => "PRF",
        Integ = 3 => "INTEG",
        Dh = 4 => "DH",
        Esn = 5 => "ESN",
    }
}

registry! {
    /// Encryption algorithms (transform type 1).
    EncrId(u16) {
        AesCbc = 12 => "AES_CBC",
        AesGcm16 = 20 => "AES_GCM_16",
        ChaCha20Poly1305 = 28 => "CHACHA20_POLY1305",
    }
}

impl EncrId {
    /// AEAD ciphers bring their own integrity (integrity transform NONE).
    pub fn is_aead(self) -> bool {
        matches!(self, EncrId::AesGcm16 | EncrId::ChaCha20Poly1305)
    }
}

registry! {
    /// Pseudorandom functions (transform type 2).
    PrfId(u16) {
        HmacSha2_256 = 5 => "PRF_HMAC_SHA2_256",
        HmacSha2_384 = 6 => "PRF_HMAC_SHA2_384",
        HmacSha2_512 = 7 => "PRF_HMAC_SHA2_512",
    }
}

registry! {
    /// Integrity algorithms (transform type 3).
    IntegId(u16) {
        None = 0 => "NONE",
        HmacSha2_256_128 = 12 => "AUTH_HMAC_SHA2_256_128",
        HmacSha2_384_192 = 13 => "AUTH_HMAC_SHA2_384_192",
        HmacSha2_512_256 = 14 => "AUTH_HMAC_SHA2_512_256",
    }
}

registry! {
    /// Diffie-Hellman groups (transform type 4).
    DhGroup(u16) {
        None = 0 => "NONE",
        Modp2048 = 14 => "MODP_2048",
        Ecp256 = 19 => "ECP_256",
        Ecp384 = 20 => "ECP_384",
        X25519 = 31 => "CURVE_25519",
    }
}

registry! {
    /// Extended Sequence Numbers (transform type 5).
    EsnId(u16) {
        None = 0 => "NO_EXT_SEQ",
        Extended = 1 => "EXT_SEQ",
    }
}

/// Transform attribute Key Length, TV format (section 3.3.5).
pub const ATTR_KEY_LENGTH: u16 = 14;

registry! {
    /// Identification types (section 3.5).
    IdType(u8) {
        Ipv4Addr = 1 => "ID_IPV4_ADDR",
        Fqdn = 2 => "ID_FQDN",
        Rfc822Addr = 3 => "ID_RFC822_ADDR",
        Ipv6Addr = 5 => "ID_IPV6_ADDR",
        DerAsn1Dn = 9 => "ID_DER_ASN1_DN",
        KeyId = 11 => "ID_KEY_ID",
    }
}

registry! {
    /// Authentication methods (section 3.8).
    AuthMethod(u8) {
        RsaSignature = 1 => "RSA Digital Signature",
        SharedKeyMic = 2 => "Shared Key Message Integrity Code",
        DssSignature = 3 => "DSS Digital Signature",
        DigitalSignature = 14 => "Digital Signature",
    }
}

registry! {
    /// Traffic selector types (section 3.13.1).
    TsType(u8) {
        Ipv4AddrRange = 7 => "TS_IPV4_ADDR_RANGE",
        Ipv6AddrRange = 8 => "TS_IPV6_ADDR_RANGE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_and_names_are_canonical() {
        for v in 0..=u8::MAX {
            assert_eq!(u8::from(PayloadType::from(v)), v);
            assert_eq!(u8::from(ExchangeType::from(v)), v);
        }
        for v in 0..=u16::MAX {
            let n = NotifyType::from(v);
            assert_eq!(n.raw(), v);
            assert_eq!(n.name().is_none(), matches!(n, NotifyType::Unknown(_)));
        }
        assert_eq!(NotifyType::from(16393), NotifyType::RekeySa);
        assert!(NotifyType::TsUnacceptable.is_error() && !NotifyType::Cookie.is_error());
        assert_eq!(alloc::format!("{}", NotifyType::from(9999)), "NotifyType(9999)");
        assert_eq!(alloc::format!("{}", ExchangeType::CreateChildSa), "CREATE_CHILD_SA");
    }
}
