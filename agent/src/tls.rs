//! The agent's side of TLS: gRPC channels to the collector over rustls (ring only).
//!
//! Two ways to trust the collector: the CA file written at enrollment (every normal
//! connection, with the agent's client certificate), and, only while enrolling, either a CA
//! file given by the operator or the pinned SHA-256 of the CA certificate's DER
//! ([`PinnedCaVerifier`]: the server's chain must contain that exact certificate and the
//! server certificate must verify against it, host name included).
//!
//! Promises: the server's certificate is always verified (no "insecure" mode exists); the
//! endpoint must be `https://`; files are bounded in size and checked before use (the key
//! must belong to the certificate), with errors naming the file; connecting is bounded by
//! the given timeout (TCP + TLS + HTTP/2). Never: listens, or sends the private key anywhere.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Largest certificate or key file read.
pub const MAX_PEM_BYTES: u64 = 256 * 1024;

/// Why a TLS channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_PEM_BYTES`].
    #[error("{0} is larger than {MAX_PEM_BYTES} bytes")]
    TooLarge(PathBuf),
    /// A file holds no usable PEM certificate or key.
    #[error("{what}: {message}")]
    Pem {
        /// The file or text concerned.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// The certificate does not belong to the private key.
    #[error("{cert} does not belong to the key in {key}: {message}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        message: String,
    },
    /// The endpoint is not a valid URI.
    #[error("invalid collector endpoint {0:?}")]
    InvalidEndpoint(String),
    /// The endpoint is not `https://` (the agent only speaks TLS).
    #[error("collector endpoint {0:?} must start with https://")]
    NotHttps(String),
    /// A CA fingerprint is not 64 hex digits (colons allowed).
    #[error(
        "invalid CA fingerprint {0:?}: expected the SHA-256 of the CA certificate as 64 hex digits"
    )]
    BadFingerprint(String),
    /// tonic refused the TLS configuration.
    #[error("TLS configuration refused: {0}")]
    Config(String),
    /// TCP, TLS or HTTP/2 setup failed.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The error and its causes.
        message: String,
    },
    /// Connecting took longer than the timeout.
    #[error("connecting to {endpoint} took longer than {timeout:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The bound.
        timeout: Duration,
    },
}

/// Installs ring as the process-wide rustls crypto provider. Idempotent: a provider that is
/// already installed is kept.
pub fn install_crypto_provider() {
    // Err means "already installed": exactly the state we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where the agent's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The collector's CA certificate (PEM): the only root trusted.
    pub ca: PathBuf,
    /// The agent's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The agent's private key (PEM, mode 0600).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The standard names in a state directory: `ca.pem`, `cert.pem`, `key.pem`.
    pub fn in_dir(state_dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: state_dir.join("ca.pem"),
            cert: state_dir.join("cert.pem"),
            key: state_dir.join("key.pem"),
        }
    }
}

/// How the collector's server certificate is trusted.
#[derive(Clone)]
pub enum ServerTrust {
    /// These CA certificates (PEM).
    CaPem(String),
    /// The CA certificate with this SHA-256 (of its DER), which the server must present.
    PinnedCa([u8; 32]),
}

impl fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTrust::CaPem(_) => f.write_str("CaPem(..)"),
            ServerTrust::PinnedCa(pin) => write!(f, "PinnedCa({})", hex::encode(pin)),
        }
    }
}

/// An [`Endpoint`] for `endpoint` over mTLS with the agent's certificate, trusting only the
/// CA file; nothing is connected yet (the transport may add keep-alives, or connect lazily).
pub fn endpoint(
    endpoint: &str,
    files: &TlsFiles,
    connect_timeout: Duration,
) -> Result<Endpoint, TlsError> {
    install_crypto_provider();
    let ca = read_pem_file(&files.ca)?;
    parse_certs(&ca, &files.ca.display().to_string())?;
    let cert = read_pem_file(&files.cert)?;
    let key = read_pem_file(&files.key)?;
    check_key_matches(&cert, &key, files)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .timeout(connect_timeout);
    base_endpoint(endpoint, connect_timeout)?
        .tls_config(tls)
        .map_err(|e| TlsError::Config(error_chain(&e)))
}

/// A connected channel to `endpoint` ("https://host:port") over mTLS with the agent's
/// certificate, trusting only the CA file. `connect_timeout` bounds TCP + TLS + HTTP/2.
///
/// Under TLS 1.3 a collector that refuses our certificate does so after the handshake: the
/// refusal then shows at the first RPC, not here.
pub async fn connect(
    endpoint_uri: &str,
    files: &TlsFiles,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    let ep = endpoint(endpoint_uri, files, connect_timeout)?;
    connect_endpoint(&ep, endpoint_uri, connect_timeout).await
}

/// A channel without a client certificate, for `Enroll`, trusting the collector as `trust`
/// says.
pub async fn connect_for_enrollment(
    endpoint_uri: &str,
    trust: &ServerTrust,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    install_crypto_provider();
    let base = base_endpoint(endpoint_uri, connect_timeout)?;
    let tls = ClientTlsConfig::new().timeout(connect_timeout);
    let ep = match trust {
        ServerTrust::CaPem(pem) => {
            parse_certs(pem, "CA certificate")?;
            base.tls_config(tls.ca_certificate(Certificate::from_pem(pem)))
        }
        ServerTrust::PinnedCa(pin) => {
            base.tls_config_with_verifier(tls, Arc::new(PinnedCaVerifier::new(*pin)))
        }
    }
    .map_err(|e| TlsError::Config(error_chain(&e)))?;
    connect_endpoint(&ep, endpoint_uri, connect_timeout).await
}

/// Parses a CA fingerprint: 64 hex digits, either case, optionally separated by colons
/// (the form `openssl x509 -fingerprint -sha256` prints).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadFingerprint(text.chars().take(120).collect());
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 {
        return Err(bad());
    }
    let bytes = hex::decode(&digits).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// SHA-256 of `der`.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Every certificate in a PEM text (at least one).
pub fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_string(),
            message: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`].
pub fn read_pem_file(path: &Path) -> Result<String, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge(path.to_path_buf()));
    }
    std::fs::read_to_string(path).map_err(read)
}

fn check_key_matches(cert_pem: &str, key_pem: &str, files: &TlsFiles) -> Result<(), TlsError> {
    let chain = parse_certs(cert_pem, &files.cert.display().to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: files.key.display().to_string(),
        message: e.to_string(),
    })?;
    let mismatch = |e: rustls::Error| TlsError::KeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    };
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(mismatch)?;
    rustls::sign::CertifiedKey::new(chain, signing_key)
        .keys_match()
        .map_err(mismatch)
}

fn base_endpoint(uri: &str, connect_timeout: Duration) -> Result<Endpoint, TlsError> {
    let ep = Endpoint::from_shared(uri.to_string())
        .map_err(|_| TlsError::InvalidEndpoint(uri.chars().take(200).collect()))?;
    if ep.uri().scheme_str() != Some("https") {
        return Err(TlsError::NotHttps(uri.chars().take(200).collect()));
    }
    Ok(ep.connect_timeout(connect_timeout))
}

async fn connect_endpoint(
    ep: &Endpoint,
    uri: &str,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    match tokio::time::timeout(connect_timeout, ep.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(TlsError::Connect {
            endpoint: uri.to_string(),
            message: error_chain(&e),
        }),
        Err(_) => Err(TlsError::Timeout {
            endpoint: uri.to_string(),
            timeout: connect_timeout,
        }),
    }
}

/// "outer: cause: root cause" — tonic's transport errors say little on their own.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // Bounded: error chains are short, but never trust that.
    for _ in 0..8 {
        let Some(s) = source else { break };
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Trusts a server whose presented chain contains the certificate with the pinned SHA-256
/// and whose end-entity certificate verifies against it (signature, validity, serverAuth,
/// host name), exactly as if that certificate were the only root.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier for the CA certificate whose DER has SHA-256 `pin`.
    pub fn new(pin: [u8; 32]) -> PinnedCaVerifier {
        PinnedCaVerifier {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| sha256(c) == self.pin)
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(p, key),
        }
    }

    fn server_cert(ca: &Ca, name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn verify(pin: [u8; 32], chain: &[CertificateDer<'static>], name: &str) -> bool {
        let v = PinnedCaVerifier::new(pin);
        let sn = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(&chain[0], &chain[1..], &sn, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn pin_accepts_only_a_chain_through_the_pinned_ca() {
        let ours = ca();
        let theirs = ca();
        let leaf = server_cert(&ours, "collector.test");
        let pin = sha256(&ours.der);
        assert!(verify(
            pin,
            &[leaf.clone(), ours.der.clone()],
            "collector.test"
        ));
        // Right pin, wrong host name.
        assert!(!verify(
            pin,
            &[leaf.clone(), ours.der.clone()],
            "other.test"
        ));
        // Wrong pin.
        assert!(!verify(
            sha256(&theirs.der),
            &[leaf.clone(), ours.der.clone()],
            "collector.test"
        ));
        // The pinned CA is in the chain, but the leaf is not signed by it.
        let foreign = server_cert(&theirs, "collector.test");
        assert!(!verify(pin, &[foreign, ours.der.clone()], "collector.test"));
        // The server does not present the CA: the pin cannot be checked.
        assert!(!verify(pin, &[leaf], "collector.test"));
    }

    #[test]
    fn fingerprints_parse_in_the_usual_spellings() {
        let pin = sha256(b"x");
        let lower = hex::encode(pin);
        assert_eq!(parse_fingerprint(&lower).unwrap(), pin);
        assert_eq!(parse_fingerprint(&lower.to_uppercase()).unwrap(), pin);
        let colons: Vec<String> = pin.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), pin);
        assert!(parse_fingerprint(&lower[..62]).is_err());
        assert!(parse_fingerprint(&format!("{}zz", &lower[..62])).is_err());
        assert!(parse_fingerprint("").is_err());
    }

    #[test]
    fn endpoint_checks_scheme_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(dir.path());
        let t = Duration::from_secs(1);
        assert!(matches!(
            endpoint("https://127.0.0.1:1", &files, t),
            Err(TlsError::Read { .. })
        ));
        // A "CA file" that holds a key, not a certificate.
        std::fs::write(&files.ca, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        assert!(matches!(
            endpoint("https://127.0.0.1:1", &files, t),
            Err(TlsError::Pem { .. })
        ));
        assert!(matches!(
            base_endpoint("http://127.0.0.1:1", t),
            Err(TlsError::NotHttps(_))
        ));
        assert!(matches!(
            base_endpoint("not a uri", t),
            Err(TlsError::InvalidEndpoint(_)) | Err(TlsError::NotHttps(_))
        ));
    }

    #[test]
    fn mismatched_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(dir.path());
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::default().self_signed(&key).unwrap();
        std::fs::write(&files.ca, cert.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let err = endpoint("https://127.0.0.1:1", &files, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        endpoint("https://127.0.0.1:1", &files, Duration::from_secs(1)).unwrap();
    }

    proptest! {
        #[test]
        fn fingerprint_parsing_never_panics(s in ".{0,200}") {
            let _ = parse_fingerprint(&s);
        }

        #[test]
        fn fingerprint_round_trips(bytes in any::<[u8; 32]>()) {
            prop_assert_eq!(parse_fingerprint(&hex::encode(bytes)).unwrap(), bytes);
        }
    }
}
