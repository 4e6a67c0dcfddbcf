//! Pseudorandom functions and prf+ (RFC 7296 section 2.13), HMAC-SHA2
//! (RFC 4868).
use ring::hmac;
use wasmsec_wire::ike::PrfId;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prf {
    Sha256,
    Sha384,
    Sha512,
}

impl Prf {
    pub fn from_id(id: PrfId) -> Option<Prf> {
        match id {
            PrfId::HmacSha2_256 => Some(Prf::Sha256),
            PrfId::HmacSha2_384 => Some(Prf::Sha384),
            PrfId::HmacSha2_512 => Some(Prf::Sha512),
            _ => None,
        }
    }

    fn alg(&self) -> hmac::Algorithm {
        match self {
            Prf::Sha256 => hmac::HMAC_SHA256,
            Prf::Sha384 => hmac::HMAC_SHA384,
            Prf::Sha512 => hmac::HMAC_SHA512,
        }
    }

    /// Output (and preferred key) length in bytes.
    pub fn output_len(&self) -> usize {
        match self {
            Prf::Sha256 => 32,
            Prf::Sha384 => 48,
            Prf::Sha512 => 64,
        }
    }

    /// prf(key, data).
    pub fn prf(&self, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        let k = hmac::Key::new(self.alg(), key);
        let mut ctx = hmac::Context::with_key(&k);
        for p in parts {
            ctx.update(p);
        }
        Zeroizing::new(ctx.sign().as_ref().to_vec())
    }

    /// prf+(key, seed) = T1 | T2 | ..., Tn = prf(key, Tn-1 | seed | n),
    /// truncated to `len` bytes (at most 255 blocks, section 2.13).
    pub fn prf_plus(&self, key: &[u8], seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
        assert!(len <= 255 * self.output_len(), "prf+ asked for more than 255 blocks");
        let mut out = Zeroizing::new(Vec::with_capacity(len + self.output_len()));
        let mut t = Zeroizing::new(Vec::new());
        let mut n = 1u8;
        while out.len() < len {
            t = self.prf(key, &[&t, seed, &[n]]);
            out.extend_from_slice(&t);
            n = n.wrapping_add(1);
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let out = Prf::Sha256.prf(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(out.iter().map(|b| format!("{b:02x}")).collect::<String>(), want);
    }

    #[test]
    fn prf_plus_is_the_chained_construction() {
        let p = Prf::Sha256;
        let out = p.prf_plus(b"key", b"seed", 80);
        let t1 = p.prf(b"key", &[b"seed", &[1]]);
        let t2 = p.prf(b"key", &[&t1, b"seed", &[2]]);
        let t3 = p.prf(b"key", &[&t2, b"seed", &[3]]);
        assert_eq!(&out[..32], &t1[..]);
        assert_eq!(&out[32..64], &t2[..]);
        assert_eq!(&out[64..], &t3[..16]);
    }
}
