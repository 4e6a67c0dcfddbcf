//! Proposals in strongSwan's syntax (`aes256gcm16-prfsha384-x25519`,
//! comma-separated), their SA payload form (RFC 7296 section 3.3), and
//! selection as responder (section 2.7).
use std::fmt;

use wasmsec_wire::ike::{DhGroup, EncrId, EsnId, IntegId, PrfId, Proposal, ProtocolId, Transform, TransformType};

/// An encryption transform: ID and key length in bits (None for ciphers
/// with a fixed key, which must not carry the attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Encr {
    /// The encryption transform ID (RFC 7296 section 3.3.2).
    pub id: EncrId,
    /// Key length in bits, sent as the Key Length attribute (section 3.3.5).
    pub key_bits: Option<u16>,
}

impl Encr {
    pub fn is_aead(&self) -> bool {
        self.id.is_aead()
    }
}

/// A configured proposal: acceptable transforms of each type, in
/// preference order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Encryption algorithms; AEAD and classic ciphers never share a proposal.
    pub encr: Vec<Encr>,
    /// Pseudorandom functions (IKE only; ignored for ESP).
    pub prf: Vec<PrfId>,
    /// Integrity algorithms; empty with an AEAD cipher.
    pub integ: Vec<IntegId>,
    /// Key exchange groups; for ESP, empty means no PFS.
    pub dh: Vec<DhGroup>,
    /// ESN choices for ESP (no ESN when none configured); unused for IKE.
    pub esn: Vec<EsnId>,
}

/// What a proposal is for: the IKE SA or an ESP CHILD SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ike,
    Esp,
}

impl Kind {
    fn protocol(self) -> ProtocolId {
        match self {
            Kind::Ike => ProtocolId::Ike,
            Kind::Esp => ProtocolId::Esp,
        }
    }
}

/// A negotiated set: one transform of each type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chosen {
    /// The encryption algorithm and key length.
    pub encr: Encr,
    /// `Unknown(0)` for ESP, which has no PRF.
    pub prf: PrfId,
    /// The integrity algorithm; `IntegId::None` with an AEAD cipher.
    pub integ: IntegId,
    /// `None` for a CHILD SA without PFS.
    pub dh: DhGroup,
    /// Extended sequence numbers (ESP only; always false for IKE).
    pub esn: bool,
}

fn keyword(word: &str, kind: Kind, c: &mut Config, warnings: &mut Vec<String>) -> Result<(), String> {
    let w = word.to_ascii_lowercase();
    let encr = |id, bits| Encr { id, key_bits: bits };
    match w.as_str() {
        "aes128gcm16" | "aes128gcm128" | "aes128gcm" => c.encr.push(encr(EncrId::AesGcm16, Some(128))),
        "aes256gcm16" | "aes256gcm128" | "aes256gcm" => c.encr.push(encr(EncrId::AesGcm16, Some(256))),
        "chacha20poly1305" => c.encr.push(encr(EncrId::ChaCha20Poly1305, None)),
        "aes128" | "aes" => c.encr.push(encr(EncrId::AesCbc, Some(128))),
        "aes256" => c.encr.push(encr(EncrId::AesCbc, Some(256))),
        "sha256" | "sha2_256" => c.integ.push(IntegId::HmacSha2_256_128),
        "sha384" | "sha2_384" => c.integ.push(IntegId::HmacSha2_384_192),
        "sha512" | "sha2_512" => c.integ.push(IntegId::HmacSha2_512_256),
        "prfsha256" => c.prf.push(PrfId::HmacSha2_256),
        "prfsha384" => c.prf.push(PrfId::HmacSha2_384),
        "prfsha512" => c.prf.push(PrfId::HmacSha2_512),
        "x25519" | "curve25519" => c.dh.push(DhGroup::X25519),
        "ecp256" => c.dh.push(DhGroup::Ecp256),
        "ecp384" => c.dh.push(DhGroup::Ecp384),
        "modp2048" => c.dh.push(DhGroup::Modp2048),
        "esn" if kind == Kind::Esp => c.esn.push(EsnId::Extended),
        "noesn" if kind == Kind::Esp => c.esn.push(EsnId::None),
        // Known to strongSwan, not (yet) to us: skipped with a warning so a
        // shared proposal string still works.
        "sha1" | "sha" | "md5" | "aes192" | "aes192gcm16" | "3des" | "modp1024" | "modp1536" | "modp3072"
        | "modp4096" | "ecp521" | "x448" | "curve448" | "aes128ccm16" | "aes256ccm16" | "aesxcbc" | "aescmac"
        | "prfsha1" | "aes128ctr" | "aes256ctr" | "camellia128" | "camellia256" => {
            warnings.push(format!("{word}: not supported by wasmsec, skipped"));
        }
        _ => return Err(format!("unknown algorithm keyword {word:?}")),
    }
    Ok(())
}

/// Parse a comma-separated list of proposals. Returns the proposals and
/// warnings about skipped algorithms.
pub fn parse(s: &str, kind: Kind) -> Result<(Vec<Config>, Vec<String>), String> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut c = Config::default();
        for w in p.split('-') {
            keyword(w, kind, &mut c, &mut warnings)?;
        }
        // strongSwan: without an explicit PRF, the integrity algorithms imply it.
        if kind == Kind::Ike && c.prf.is_empty() {
            for i in &c.integ {
                c.prf.push(match *i {
                    IntegId::HmacSha2_256_128 => PrfId::HmacSha2_256,
                    IntegId::HmacSha2_384_192 => PrfId::HmacSha2_384,
                    _ => PrfId::HmacSha2_512,
                });
            }
        }
        if kind == Kind::Esp && c.esn.is_empty() {
            c.esn.push(EsnId::None);
        }
        // AEAD and classic ciphers go in separate proposals (RFC 5282 section 8).
        let (aead, classic): (Vec<Encr>, Vec<Encr>) = c.encr.iter().partition(|e| e.is_aead());
        for (encr, integ) in [(aead, Vec::new()), (classic, c.integ.clone())] {
            if encr.is_empty() {
                continue;
            }
            let q = Config { encr, integ, ..c.clone() };
            let usable = match kind {
                Kind::Ike => !q.prf.is_empty() && !q.dh.is_empty(),
                Kind::Esp => true,
            } && (q.encr[0].is_aead() || !q.integ.is_empty());
            if usable {
                out.push(q);
            } else {
                warnings.push(format!("proposal {p:?}: incomplete after skipping unsupported algorithms, dropped"));
            }
        }
    }
    if out.is_empty() {
        return Err(format!("no usable proposal in {s:?}"));
    }
    Ok((out, warnings))
}

fn plain(kind: TransformType, id: u16) -> Transform {
    Transform { kind, id, key_len: None }
}

/// Our proposals as SA payload proposals (numbered from 1).
pub fn to_wire(cs: &[Config], kind: Kind, spi: &[u8], with_dh: bool) -> Vec<Proposal> {
    cs.iter()
        .enumerate()
        .map(|(i, c)| {
            let mut tr = Vec::new();
            for e in &c.encr {
                tr.push(Transform {
                    kind: TransformType::Encr,
                    id: e.id.raw(),
                    key_len: e.key_bits.filter(|_| e.id != EncrId::ChaCha20Poly1305),
                });
            }
            if kind == Kind::Ike {
                tr.extend(c.prf.iter().map(|id| plain(TransformType::Prf, id.raw())));
            }
            tr.extend(c.integ.iter().map(|id| plain(TransformType::Integ, id.raw())));
            if kind == Kind::Ike || with_dh {
                tr.extend(c.dh.iter().map(|id| plain(TransformType::Dh, id.raw())));
            }
            if kind == Kind::Esp {
                tr.extend(c.esn.iter().map(|id| plain(TransformType::Esn, id.raw())));
            }
            Proposal { num: (i + 1) as u8, protocol: kind.protocol(), spi: spi.to_vec(), transforms: tr }
        })
        .collect()
}

/// The single-choice proposal a responder answers with.
pub fn chosen_to_wire(c: &Chosen, kind: Kind, num: u8, spi: &[u8]) -> Proposal {
    let cfg = Config {
        encr: vec![c.encr],
        prf: if kind == Kind::Ike { vec![c.prf] } else { vec![] },
        integ: if c.integ != IntegId::None { vec![c.integ] } else { vec![] },
        dh: if c.dh != DhGroup::None { vec![c.dh] } else { vec![] },
        esn: vec![if c.esn { EsnId::Extended } else { EsnId::None }],
    };
    let mut p = to_wire(&[cfg], kind, spi, c.dh != DhGroup::None).remove(0);
    p.num = num;
    p
}

fn encr_of(tr: &Transform) -> Encr {
    let id = EncrId::from(tr.id);
    Encr { id, key_bits: if id == EncrId::ChaCha20Poly1305 { None } else { tr.key_len } }
}

fn encr_matches(ours: &Encr, theirs: &Encr) -> bool {
    // ChaCha20-Poly1305 has a fixed 256-bit key; some peers still send the attribute.
    ours.id == theirs.id && (ours.id == EncrId::ChaCha20Poly1305 || ours.key_bits == theirs.key_bits)
}

/// Pick from one peer proposal against one of ours (section 2.7: one
/// transform of each type the peer offered). `ignore_dh` for CHILD SAs
/// created in IKE_AUTH, which have no KE exchange.
fn pick(theirs: &Proposal, ours: &Config, kind: Kind, ignore_dh: bool) -> Option<Chosen> {
    let of = |ty: TransformType| theirs.transforms.iter().filter(move |tr| tr.kind == ty);
    let offers = |ty: TransformType, id: u16| of(ty).any(|tr| tr.id == id);
    let encr = ours.encr.iter().find_map(|o| of(TransformType::Encr).map(encr_of).find(|e| encr_matches(o, e)))?;
    let prf = match kind {
        Kind::Ike => *ours.prf.iter().find(|p| offers(TransformType::Prf, p.raw()))?,
        Kind::Esp => PrfId::Unknown(0),
    };
    let integ = if encr.is_aead() {
        // AEAD: no integrity transform, or NONE (RFC 5282 section 8).
        if of(TransformType::Integ).any(|tr| tr.id != IntegId::None.raw()) {
            return None;
        }
        IntegId::None
    } else {
        *ours.integ.iter().find(|i| offers(TransformType::Integ, i.raw()))?
    };
    let dh = match kind {
        Kind::Ike => *ours.dh.iter().find(|d| offers(TransformType::Dh, d.raw()))?,
        Kind::Esp if ignore_dh => DhGroup::None,
        Kind::Esp => {
            let offered: Vec<DhGroup> =
                of(TransformType::Dh).map(|tr| DhGroup::from(tr.id)).filter(|g| *g != DhGroup::None).collect();
            match (offered.is_empty(), ours.dh.is_empty()) {
                (true, true) => DhGroup::None,
                (false, false) => *ours.dh.iter().find(|d| offered.contains(d))?,
                _ => return None,
            }
        }
    };
    let esn = match kind {
        Kind::Ike => false,
        Kind::Esp => {
            let offered: Vec<EsnId> = of(TransformType::Esn).map(|tr| EsnId::from(tr.id)).collect();
            if offered.is_empty() { false } else { *ours.esn.iter().find(|e| offered.contains(e))? == EsnId::Extended }
        }
    };
    Some(Chosen { encr, prf, integ, dh, esn })
}

/// As responder: the first peer proposal (in the peer's order) that one of
/// ours accepts; returns the peer proposal's number and SPI too.
pub fn select(theirs: &[Proposal], ours: &[Config], kind: Kind, ignore_dh: bool) -> Option<(Chosen, u8, Vec<u8>)> {
    theirs
        .iter()
        .filter(|p| p.protocol == kind.protocol())
        .find_map(|p| ours.iter().find_map(|o| pick(p, o, kind, ignore_dh)).map(|c| (c, p.num, p.spi.clone())))
}

/// Whether one of `ours` (ESP proposals) allows an SA with this cipher
/// and key length, integrity algorithm and ESN: the host's check of what
/// an untrusted engine installs. Without ESN is always allowed, as
/// selection takes it when the peer offers no ESN transform.
pub fn allows_esp(ours: &[Config], encr: Encr, integ: IntegId, esn: bool) -> bool {
    ours.iter().any(|o| esp_allows(o, &encr, integ, esn))
}

/// Whether a CHILD SA made by CREATE_CHILD_SA with this ESP transform used
/// the key exchange one of `ours` that allows the transform asks for: the
/// proposal's group for PFS (RFC 7296 section 1.3.1), or `None` where the
/// proposal has no group. The host's check of an untrusted engine's
/// derivation; the first CHILD SA, made in IKE_AUTH, has none whatever
/// the proposal says (section 1.2), and is not asked about.
pub fn allows_esp_key_exchange(ours: &[Config], encr: Encr, integ: IntegId, esn: bool, dh: Option<DhGroup>) -> bool {
    ours.iter().any(|o| {
        esp_allows(o, &encr, integ, esn)
            && match dh {
                None => o.dh.is_empty(),
                Some(g) => o.dh.contains(&g),
            }
    })
}

fn esp_allows(o: &Config, encr: &Encr, integ: IntegId, esn: bool) -> bool {
    o.encr.iter().any(|e| encr_matches(e, encr))
        && if encr.is_aead() { integ == IntegId::None } else { o.integ.contains(&integ) }
        && (!esn || o.esn.contains(&EsnId::Extended))
}

/// As initiator: check the responder's answer is one proposal with one
/// transform of each type, all of them offered by us.
pub fn check_answer(answer: &[Proposal], ours: &[Config], kind: Kind, ignore_dh: bool) -> Option<(Chosen, Vec<u8>)> {
    let [p] = answer else { return None };
    let mut seen = [0u8; 6];
    for tr in &p.transforms {
        if let Some(s) = seen.get_mut(usize::from(tr.kind.raw())) {
            *s += 1;
        }
    }
    if seen.iter().any(|n| *n > 1) {
        return None;
    }
    let (c, _, spi) = select(std::slice::from_ref(p), ours, kind, ignore_dh)?;
    Some((c, spi))
}

fn encr_name(e: &Encr) -> String {
    match (e.id, e.key_bits) {
        (EncrId::AesGcm16, Some(b)) => format!("aes{b}gcm16"),
        (EncrId::ChaCha20Poly1305, _) => "chacha20poly1305".into(),
        (EncrId::AesCbc, Some(b)) => format!("aes{b}"),
        (id, Some(b)) => format!("encr{}/{b}", id.raw()),
        (id, None) => format!("encr{}", id.raw()),
    }
}

/// A transform in strongSwan's notation (`prfsha256`, `x25519`, ...).
fn transform_name(tr: &Transform) -> String {
    let named = match tr.kind {
        TransformType::Encr => return encr_name(&encr_of(tr)),
        TransformType::Prf => match PrfId::from(tr.id) {
            PrfId::HmacSha2_256 => Some("prfsha256"),
            PrfId::HmacSha2_384 => Some("prfsha384"),
            PrfId::HmacSha2_512 => Some("prfsha512"),
            PrfId::Unknown(_) => None,
        },
        TransformType::Integ => match IntegId::from(tr.id) {
            IntegId::HmacSha2_256_128 => Some("sha256"),
            IntegId::HmacSha2_384_192 => Some("sha384"),
            IntegId::HmacSha2_512_256 => Some("sha512"),
            _ => None,
        },
        TransformType::Dh => match DhGroup::from(tr.id) {
            DhGroup::X25519 => Some("x25519"),
            DhGroup::Ecp256 => Some("ecp256"),
            DhGroup::Ecp384 => Some("ecp384"),
            DhGroup::Modp2048 => Some("modp2048"),
            _ => None,
        },
        TransformType::Esn => match EsnId::from(tr.id) {
            EsnId::None => Some("noesn"),
            EsnId::Extended => Some("esn"),
            EsnId::Unknown(_) => None,
        },
        TransformType::Unknown(_) => None,
    };
    named.map_or_else(|| format!("t{}:{}", tr.kind.raw(), tr.id), str::to_string)
}

/// Proposals in strongSwan's notation, for logs that say why negotiation failed.
pub struct Display<'a>(pub &'a [Proposal]);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let names: Vec<String> = p.transforms.iter().map(transform_name).collect();
            f.write_str(&names.join("-"))?;
        }
        Ok(())
    }
}

impl Chosen {
    /// The suite the host derives an IKE SA's keys for.
    pub fn ike_suite(&self) -> crate::crypto::IkeSuite {
        crate::crypto::IkeSuite {
            encr: self.encr.id,
            key_bits: self.encr.key_bits.unwrap_or(256),
            prf: self.prf,
            integ: self.integ,
            dh: self.dh,
        }
    }

    /// The suite the host derives a CHILD SA's keys for.
    pub fn child_suite(&self) -> crate::crypto::ChildSuite {
        crate::crypto::ChildSuite {
            encr: self.encr.id,
            key_bits: self.encr.key_bits.unwrap_or(256),
            integ: self.integ,
            esn: self.esn,
        }
    }

    /// In strongSwan's notation.
    pub fn name(&self, kind: Kind) -> String {
        let mut v = vec![encr_name(&self.encr)];
        if self.integ != IntegId::None {
            v.push(transform_name(&plain(TransformType::Integ, self.integ.raw())));
        }
        if kind == Kind::Ike {
            v.push(transform_name(&plain(TransformType::Prf, self.prf.raw())));
        }
        if self.dh != DhGroup::None {
            v.push(transform_name(&plain(TransformType::Dh, self.dh.raw())));
        }
        if kind == Kind::Esp && self.esn {
            v.push("esn".into());
        }
        v.join("-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HARNESS_IKE: &str = "aes256gcm16-aes128gcm16-prfsha256-prfsha384-x25519-ecp256-modp2048,aes256-aes128-sha256-sha384-x25519-ecp256-modp2048";
    const HARNESS_ESP: &str = "aes256gcm16-aes128gcm16,chacha20poly1305,aes256-aes128-sha256-sha1";

    #[test]
    fn parses_the_interop_harness_defaults() {
        let (ike, w) = parse(HARNESS_IKE, Kind::Ike).unwrap();
        assert!(w.is_empty());
        assert_eq!(ike.len(), 2);
        assert_eq!(ike[0].encr.len(), 2);
        assert_eq!(ike[1].prf, vec![PrfId::HmacSha2_256, PrfId::HmacSha2_384]);
        let (esp, w) = parse(HARNESS_ESP, Kind::Esp).unwrap();
        assert_eq!(esp.len(), 3);
        assert_eq!(w.len(), 1, "sha1 skipped: {w:?}");
        assert!(parse("aes256gcm16-bogus", Kind::Ike).is_err());
        assert!(parse("sha1", Kind::Esp).is_err());
    }

    #[test]
    fn allows_esp_takes_only_what_a_proposal_has() {
        let (ours, _) = parse("aes256gcm16-esn,aes128-sha256", Kind::Esp).unwrap();
        let gcm = |bits| Encr { id: EncrId::AesGcm16, key_bits: Some(bits) };
        let cbc = |bits| Encr { id: EncrId::AesCbc, key_bits: Some(bits) };
        assert!(allows_esp(&ours, gcm(256), IntegId::None, true));
        assert!(allows_esp(&ours, gcm(256), IntegId::None, false), "no ESN is always allowed");
        assert!(!allows_esp(&ours, gcm(128), IntegId::None, false), "another key length");
        assert!(!allows_esp(&ours, gcm(256), IntegId::HmacSha2_256_128, false), "an AEAD with integrity");
        assert!(allows_esp(&ours, cbc(128), IntegId::HmacSha2_256_128, false));
        assert!(!allows_esp(&ours, cbc(128), IntegId::HmacSha2_256_128, true), "ESN only where configured");
        assert!(!allows_esp(&ours, cbc(128), IntegId::HmacSha2_512_256, false), "another integrity");
        assert!(!allows_esp(&ours, cbc(256), IntegId::HmacSha2_256_128, false), "cipher and integrity of one proposal");
        let chacha = Encr { id: EncrId::ChaCha20Poly1305, key_bits: Some(256) };
        assert!(!allows_esp(&ours, chacha, IntegId::None, false));
        let (chacha_only, _) = parse("chacha20poly1305", Kind::Esp).unwrap();
        assert!(allows_esp(&chacha_only, chacha, IntegId::None, false), "its key length is fixed");
        assert!(!allows_esp(&[], gcm(256), IntegId::None, false), "nothing configured allows nothing");
    }

    #[test]
    fn select_and_check_round_trip() {
        let (ours, _) = parse("aes128gcm16-prfsha384-ecp256", Kind::Ike).unwrap();
        let (theirs, _) = parse(HARNESS_IKE, Kind::Ike).unwrap();
        let offered = to_wire(&theirs, Kind::Ike, &[], true);
        let (c, num, _) = select(&offered, &ours, Kind::Ike, false).unwrap();
        let want = Chosen {
            encr: Encr { id: EncrId::AesGcm16, key_bits: Some(128) },
            prf: PrfId::HmacSha2_384,
            integ: IntegId::None,
            dh: DhGroup::Ecp256,
            esn: false,
        };
        assert_eq!(c, want);
        assert_eq!(num, 1);
        assert_eq!(c.name(Kind::Ike), "aes128gcm16-prfsha384-ecp256");
        let answer = chosen_to_wire(&c, Kind::Ike, num, &[]);
        assert_eq!(check_answer(std::slice::from_ref(&answer), &theirs, Kind::Ike, false).map(|x| x.0), Some(c));
        // Two transforms of one type in an answer are refused.
        let mut bad = answer;
        bad.transforms.push(bad.transforms[0]);
        assert!(check_answer(&[bad], &theirs, Kind::Ike, false).is_none());
    }

    #[test]
    fn no_overlap_is_no_choice_and_displays_both_sides() {
        let (ours, _) = parse("aes256-sha512-modp2048", Kind::Ike).unwrap();
        let (theirs, _) = parse("aes128gcm16-prfsha256-x25519", Kind::Ike).unwrap();
        let offered = to_wire(&theirs, Kind::Ike, &[], true);
        assert!(select(&offered, &ours, Kind::Ike, false).is_none());
        assert_eq!(Display(&offered).to_string(), "aes128gcm16-prfsha256-x25519");
        assert_eq!(Display(&to_wire(&ours, Kind::Ike, &[], true)).to_string(), "aes256-prfsha512-sha512-modp2048");
    }

    #[test]
    fn esp_esn_and_pfs() {
        let (ours, _) = parse("aes256gcm16-esn-noesn", Kind::Esp).unwrap();
        let (theirs, _) = parse("aes256gcm16-noesn", Kind::Esp).unwrap();
        let (c, _, spi) = select(&to_wire(&theirs, Kind::Esp, &[1, 2, 3, 4], false), &ours, Kind::Esp, false).unwrap();
        assert!(!c.esn);
        assert_eq!(spi, vec![1, 2, 3, 4]);
        let (pfs, _) = parse("aes256gcm16-x25519", Kind::Esp).unwrap();
        assert!(select(&to_wire(&pfs, Kind::Esp, &[1; 4], true), &ours, Kind::Esp, false).is_none());
        assert!(select(&to_wire(&pfs, Kind::Esp, &[1; 4], true), &ours, Kind::Esp, true).is_some());
    }
}
