//! The collector's rustls plumbing: the process-wide crypto provider (ring, never aws-lc-rs),
//! PEM decoding through rustls-pki-types, and SHA-256 for fingerprints and token hashes.
//!
//! Promises: every PEM input is bounded in size and decoded without panicking; a PEM text
//! that holds no object of the wanted kind is an error, never an empty success. Never: reads
//! files, or builds a configuration that accepts a peer without verifying it (the server
//! configuration itself lives in [`crate::pki::Pki::server_tls`]).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Largest PEM text accepted (a certificate chain or a key is a few KiB).
pub const MAX_PEM_BYTES: usize = 256 * 1024;

/// Why a PEM text could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The text is larger than [`MAX_PEM_BYTES`].
    #[error("PEM text is {0} bytes, more than the {MAX_PEM_BYTES} accepted")]
    TooLarge(usize),
    /// The text is not valid PEM.
    #[error("invalid PEM: {0}")]
    Invalid(String),
    /// The text holds no object of the wanted kind.
    #[error("PEM text holds no {0}")]
    Missing(&'static str),
}

/// Installs ring as the process-wide rustls crypto provider. Idempotent: a provider that is
/// already installed (by us or by a caller) is kept.
pub fn install_crypto_provider() {
    // Err means "already installed": exactly the state we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Every certificate in a PEM text, in order. At least one, or an error.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    check_size(pem)?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::Missing("certificate"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM text.
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    check_size(pem)?;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::Missing("private key"),
        other => PemError::Invalid(other.to_string()),
    })
}

fn check_size(pem: &str) -> Result<(), PemError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(PemError::TooLarge(pem.len()));
    }
    Ok(())
}

/// SHA-256 of `data`, lowercase hex.
///
/// Computed with ring through rustls (the TLS 1.3 suite's hash), which keeps the collector
/// on the one crypto implementation it already ships.
pub fn sha256_hex(data: &[u8]) -> String {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    match suite.tls13() {
        Some(s) => hex::encode(s.common.hash_provider.hash(data).as_ref()),
        // Unreachable (TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite by definition). Still a
        // per-input digest, so token hashes stay distinct, and one that never equals a
        // SHA-256 hex string, so a fingerprint comparison fails closed.
        None => format!("blake3:{}", blake3::hash(data).to_hex()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn pem_errors_are_errors() {
        assert!(matches!(certs_from_pem(""), Err(PemError::Missing(_))));
        assert!(matches!(
            private_key_from_pem("not pem"),
            Err(PemError::Missing(_))
        ));
        let big = "x".repeat(MAX_PEM_BYTES + 1);
        assert!(matches!(certs_from_pem(&big), Err(PemError::TooLarge(_))));
        assert!(
            certs_from_pem("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }

    #[test]
    fn install_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    proptest::proptest! {
        #[test]
        fn pem_decoding_never_panics(s in ".{0,2000}") {
            let _ = certs_from_pem(&s);
            let _ = private_key_from_pem(&s);
        }

        #[test]
        fn pem_decoding_of_armoured_garbage_never_panics(body in "[A-Za-z0-9+/=\n]{0,800}") {
            let text = format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");
            let _ = certs_from_pem(&text);
            let key = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
            let _ = private_key_from_pem(&key);
        }
    }
}
