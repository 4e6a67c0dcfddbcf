//! Key export for Wireshark (opt-in, debugging only): IKE SA keys as
//! `ikev2_decryption_table` lines, CHILD SA keys as `esp_sa` lines. Both
//! files disclose secrets, so they are created mode 0600 and the daemon
//! warns when either is on.
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use wasmsec_crypto::{push_hex, secret_buffer};

/// Append one line to a secret file, creating it readable by its owner only.
pub fn append_secret_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    writeln!(f, "{line}")
}

/// Write `lines` (hex) to a file readable by its owner only, replacing it.
pub fn write_hex_lines(path: &Path, lines: &[Vec<u8>]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    for l in lines {
        let mut hex = secret_buffer(2 * l.len());
        push_hex(&mut hex, l);
        writeln!(f, "{}", hex.as_str())?;
    }
    Ok(())
}

/// Wireshark's names for an ESP transform in its `esp_sa` table:
/// encryption, authentication, and how many bytes of the keying material
/// are the encryption key. Wireshark 4.0 (Debian 12) cannot decrypt
/// ChaCha20-Poly1305 ESP, so it has none.
pub fn wireshark_esp(a: crate::keys::EspAlgorithm) -> Option<(&'static str, &'static str, usize)> {
    use crate::keys::{EspAlgorithm, Integ};
    match a {
        EspAlgorithm::Aes128Gcm16 => Some(("AES-GCM with 16 octet ICV [RFC4106]", "NULL", 20)),
        EspAlgorithm::Aes256Gcm16 => Some(("AES-GCM with 16 octet ICV [RFC4106]", "NULL", 36)),
        EspAlgorithm::ChaCha20Poly1305 => None,
        EspAlgorithm::AesCbc { key_bits, integ } => Some((
            "AES-CBC [RFC3602]",
            match integ {
                Integ::Sha256_128 => "HMAC-SHA-256-128 [RFC4868]",
                Integ::Sha384_192 => "HMAC-SHA-384-192 [RFC4868]",
                Integ::Sha512_256 => "HMAC-SHA-512-256 [RFC4868]",
            },
            usize::from(key_bits / 8),
        )),
    }
}

/// The algorithm and key columns of an `esp_sa` line for this keying
/// material (the address and SPI columns are the caller's), or `None` when
/// Wireshark cannot decrypt the transform.
pub fn esp_sa_keys(alg: crate::keys::EspAlgorithm, keymat: &[u8]) -> Option<zeroize::Zeroizing<String>> {
    let (enc, auth, enc_len) = wireshark_esp(alg)?;
    let (ek, ak) = keymat.split_at(enc_len.min(keymat.len()));
    let mut out = secret_buffer(2 * keymat.len() + enc.len() + auth.len() + 16);
    out.push_str(&format!("\"{enc}\",\"0x"));
    push_hex(&mut out, ek);
    out.push_str(&format!("\",\"{auth}\",\""));
    if !ak.is_empty() {
        out.push_str("0x");
        push_hex(&mut out, ak);
    }
    out.push('"');
    Some(out)
}

/// One `esp_sa` line: IPv4 outer addresses, SPI, then the key columns.
pub fn esp_sa_line(src: &str, dst: &str, spi: u32, keys: &str) -> zeroize::Zeroizing<String> {
    let mut out = secret_buffer(keys.len() + src.len() + dst.len() + 32);
    out.push_str(&format!("\"IPv4\",\"{src}\",\"{dst}\",\"{spi:#010x}\","));
    out.push_str(keys);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::EspAlgorithm;

    #[test]
    fn secret_files_are_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wasmsec-keylog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("esp_sa");
        append_secret_line(&f, "a").unwrap();
        append_secret_line(&f, "b").unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a\nb\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn esp_sa_lines_split_cipher_and_integrity_keys() {
        let k = esp_sa_keys(EspAlgorithm::Aes128Gcm16, &[0x11; 20]).unwrap();
        assert_eq!(&*k, &format!("\"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{}\",\"NULL\",\"\"", "11".repeat(20)));
        let cbc = EspAlgorithm::from_name("aes128-sha256").unwrap();
        let mut km = vec![0xaa; 16];
        km.extend([0xbb; 32]);
        let k = esp_sa_keys(cbc, &km).unwrap();
        assert!(k.contains(&format!("\"0x{}\"", "aa".repeat(16))) && k.contains(&format!("\"0x{}\"", "bb".repeat(32))));
        assert!(esp_sa_keys(EspAlgorithm::ChaCha20Poly1305, &[0; 36]).is_none());
        let line = esp_sa_line("198.18.0.1", "198.18.0.2", 0xc0000001, &k);
        assert!(line.starts_with("\"IPv4\",\"198.18.0.1\",\"198.18.0.2\",\"0xc0000001\",\"AES-CBC [RFC3602]\""));
    }
}
