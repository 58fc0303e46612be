//! The collector's certificate authority: it makes the CA and the server certificate,
//! signs agent certificates at enrollment, and keeps the revocation list.
//!
//! On-disk layout (`<data_dir>/pki`, mode 0700): `ca.pem`, `ca.key` (0600), `server.pem`,
//! `server.key` (0600), `revoked.json` (+ `revoked.json.lock`, see [`revocation`]). Keys are
//! ECDSA P-256 made with ring; they never leave this directory.
//!
//! Promises: an agent certificate's policy comes from here, never from the CSR. Only the
//! CSR's public key is used (after rcgen has checked the CSR's self-signature): subject CN =
//! the agent id we chose, EKU clientAuth only, `CA:FALSE`, validity now − 5 min .. now +
//! validity (never past the CA's end), a fresh random serial. An agent's identity is the CN
//! of a certificate the TLS layer verified ([`agent_id_from_cert`]). `init` never overwrites
//! an existing CA. Never: signs anything for a caller without a valid enrollment token
//! ([`enroll`]), or reads a client certificate that TLS did not verify.
//!
//! Trust bootstrap: the gRPC port always speaks TLS with the client certificate OPTIONAL at
//! the TLS layer ([`Pki::server_tls`]) so that `Enroll` works before the agent has one; a
//! certificate that is presented must verify against our CA (expired or foreign ones fail
//! the handshake). `Connect` must refuse a request without `peer_certs()`; that check lives
//! in ingest.

pub mod revocation;

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmdb_proto::v1::{EnrollRequest, EnrollResponse};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKey,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;

use self::revocation::Revocations;
use crate::tls::{self, PemError, sha256_hex};
use crate::tokens::json_file::sync_parent;
use crate::tokens::{TokenError, Tokens};

/// Largest CSR accepted (an ECDSA CSR is well under 1 KiB, RSA-4096 about 2 KiB).
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Life of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Life of the server certificate.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Life of an agent certificate issued at enrollment.
pub const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Longest agent certificate life `sign_agent_csr` accepts.
pub const MAX_AGENT_VALIDITY: Duration = CA_VALIDITY;
/// Backdating of `notBefore`, so that a host whose clock is a little behind still accepts a
/// fresh certificate.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// A TLS handshake slower than this is dropped (bounds what a silent client can hold).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of every agent id.
pub const AGENT_ID_PREFIX: &str = "agt-";
const MAX_AGENT_ID_LEN: usize = 64;
const MAX_SERVER_NAMES: usize = 64;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// `init` found an existing CA in the directory.
    #[error("{0} already holds a CA; refusing to overwrite it")]
    AlreadyInitialized(PathBuf),
    /// `open` found no CA (run `cmdb-collector pki init`).
    #[error("no PKI in {0} (missing {1}); run `cmdb-collector pki init` first")]
    NotInitialized(PathBuf, &'static str),
    /// A file system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file or text could not be decoded.
    #[error("{what}: {source}")]
    Pem {
        /// What was being decoded.
        what: String,
        /// The decoding error.
        source: PemError,
    },
    /// A certificate could not be parsed as X.509.
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
    /// A key file does not belong to its certificate, or is not a key we can use.
    #[error("{0}")]
    KeyMismatch(String),
    /// The CA certificate is not a CA (no `CA:TRUE`).
    #[error("{0} is not a CA certificate")]
    NotACa(PathBuf),
    /// The CA certificate has expired: nothing can be signed any more.
    #[error("the CA certificate expired; make a new PKI and re-enroll the agents")]
    CaExpired,
    /// The CSR is larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {0} bytes, more than the {MAX_CSR_BYTES} accepted")]
    CsrTooLarge(usize),
    /// The CSR is malformed, has unsupported extensions or a wrong signature.
    #[error("invalid CSR: {0}")]
    BadCsr(String),
    /// An agent id is not `agt-` followed by 1–60 of `a-z 0-9 -`.
    #[error("invalid agent id {0:?}")]
    BadAgentId(String),
    /// A server name is neither an IP address nor a valid DNS name.
    #[error("invalid server name {0:?}")]
    BadServerName(String),
    /// `init` needs 1 ..= 64 server names.
    #[error("need between 1 and {MAX_SERVER_NAMES} server names, got {0}")]
    ServerNameCount(usize),
    /// The requested certificate life is zero or longer than [`MAX_AGENT_VALIDITY`].
    #[error("certificate validity must be positive and at most {MAX_AGENT_VALIDITY:?}")]
    BadValidity,
    /// The client certificate has no agent id in its subject CN.
    #[error("the certificate names no agent (its CN is not an agent id)")]
    NoAgentId,
    /// rcgen could not make a key or a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// The revocation list could not be read or changed.
    #[error(transparent)]
    Revocation(#[from] revocation::RevocationError),
}

/// An opened PKI directory. Cheap to share (`Arc`) between request handlers.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    fingerprint: String,
    ca_not_after: i64,
    issuer: Issuer<'static, KeyPair>,
    server_chain_pem: String,
    server_key_pem: String,
    revocations: Revocations,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("ca_fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

// === impl Pki ===

impl Pki {
    /// Makes a new CA (`CA:TRUE, pathlen 0`, keyCertSign + cRLSign, 10 years) and a server
    /// certificate for `server_names` (DNS names and IP addresses; EKU serverAuth, 2 years)
    /// in `dir`. Refuses when `dir` already holds a CA.
    pub fn init(dir: &Path, server_names: &[String]) -> Result<Pki, PkiError> {
        if server_names.is_empty() || server_names.len() > MAX_SERVER_NAMES {
            return Err(PkiError::ServerNameCount(server_names.len()));
        }
        for name in server_names {
            // The names a TLS client will check against: DNS names or IP addresses.
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(PkiError::BadServerName(name.clone()));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(dir, e))?;
        if dir.join(CA_KEY).exists() || dir.join(CA_CERT).exists() {
            return Err(PkiError::AlreadyInitialized(dir.to_path_buf()));
        }
        let now = SystemTime::now();

        let ca_key = KeyPair::generate().map_err(gen_err)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name.push(DnType::OrganizationName, "cmdb");
        ca.distinguished_name
            .push(DnType::CommonName, "cmdb agent CA");
        // pathlen 0: this CA signs leaves only, never another CA.
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut ca, now, CA_VALIDITY, None)?;
        ca.serial_number = Some(random_serial());
        let ca_cert = ca.self_signed(&ca_key).map_err(gen_err)?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().map_err(gen_err)?;
        let mut server = CertificateParams::new(server_names.to_vec())
            .map_err(|_| PkiError::BadServerName(server_names.join(",")))?;
        server.distinguished_name = DistinguishedName::new();
        server
            .distinguished_name
            .push(DnType::OrganizationName, "cmdb");
        server
            .distinguished_name
            .push(DnType::CommonName, server_names[0].as_str());
        server.is_ca = IsCa::ExplicitNoCa;
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        set_validity(&mut server, now, SERVER_VALIDITY, None)?;
        server.serial_number = Some(random_serial());
        let server_cert = server.signed_by(&server_key, &issuer).map_err(gen_err)?;

        // ca.key first, created exclusively: of two concurrent inits exactly one gets past
        // it. ca.pem last: until it exists, `open` refuses the directory.
        write_new(
            &dir.join(CA_KEY),
            issuer.key().serialize_pem().as_bytes(),
            0o600,
        )?;
        write_new(
            &dir.join(SERVER_KEY),
            server_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_new(&dir.join(SERVER_CERT), server_cert.pem().as_bytes(), 0o644)?;
        write_new(&dir.join(CA_CERT), ca_cert.pem().as_bytes(), 0o644)?;
        sync_parent(&dir.join(CA_CERT)).map_err(|e| io(dir, e))?;
        tracing::info!(dir = %dir.display(), names = ?server_names, "PKI initialised.");
        Pki::open(dir)
    }

    /// Opens a directory made by [`Pki::init`], checking that each key belongs to its
    /// certificate and that the CA is a CA.
    pub fn open(dir: &Path) -> Result<Pki, PkiError> {
        let ca_pem = read_pem(dir, CA_CERT)?;
        let ca_key_pem = read_pem(dir, CA_KEY)?;
        let server_pem = read_pem(dir, SERVER_CERT)?;
        let server_key_pem = read_pem(dir, SERVER_KEY)?;
        for key in [CA_KEY, SERVER_KEY] {
            warn_if_readable_by_others(&dir.join(key));
        }

        let ca_der = first_cert(&ca_pem, &dir.join(CA_CERT))?;
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        if !ca_x509.is_ca() {
            return Err(PkiError::NotACa(dir.join(CA_CERT)));
        }
        let ca_not_after = ca_x509.validity().not_after.timestamp();
        check_key_matches(&ca_der, &ca_key_pem, &dir.join(CA_KEY))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem)
            .map_err(|e| PkiError::KeyMismatch(format!("{}: {e}", dir.join(CA_KEY).display())))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;

        let server_der = first_cert(&server_pem, &dir.join(SERVER_CERT))?;
        check_key_matches(&server_der, &server_key_pem, &dir.join(SERVER_KEY))?;

        let mut server_chain_pem = server_pem;
        if !server_chain_pem.ends_with('\n') {
            server_chain_pem.push('\n');
        }
        // The server presents its chain with the CA, so an agent pinning the CA's
        // fingerprint finds it in the handshake.
        server_chain_pem.push_str(&ca_pem);

        Ok(Pki {
            dir: dir.to_path_buf(),
            fingerprint: sha256_hex(&ca_der),
            ca_pem,
            ca_not_after,
            issuer,
            server_chain_pem,
            server_key_pem,
            revocations: Revocations::new(dir),
        })
    }

    /// The directory this PKI lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex: what `cmdb-agent enroll
    /// --ca-sha256` pins.
    pub fn ca_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Signs an agent certificate for the public key of `csr_pem`, valid from now for
    /// `validity`. See the module doc for the policy; nothing but the key is taken from the
    /// CSR. Returns the chain PEM: leaf, then CA.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent_id: &str,
        validity: Duration,
    ) -> Result<String, PkiError> {
        self.sign_agent_csr_at(csr_pem, agent_id, validity, SystemTime::now())
    }

    /// [`Pki::sign_agent_csr`] with an explicit "now" (tests make expired certificates
    /// with it; enrollment passes its own clock).
    pub fn sign_agent_csr_at(
        &self,
        csr_pem: &str,
        agent_id: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        let public_key = parse_csr(csr_pem)?;
        self.issue(public_key, agent_id, validity, now)
    }

    /// Adds `agent_id` to the revocation list. Safe while servers in other processes run:
    /// they pick the change up at their next [`Pki::is_revoked`] call.
    pub fn revoke(&self, agent_id: &str) -> Result<(), PkiError> {
        if !valid_agent_id(agent_id) {
            return Err(PkiError::BadAgentId(agent_id.to_string()));
        }
        self.revocations.revoke(agent_id, SystemTime::now())?;
        Ok(())
    }

    /// Whether `agent_id` is revoked. Re-reads `revoked.json` only when it changed, so it is
    /// cheap per stream. Fails closed: while the list cannot be read, every agent counts as
    /// revoked (and an error is logged), since a revocation must never be skipped.
    pub fn is_revoked(&self, agent_id: &str) -> bool {
        self.revocations.is_revoked(agent_id)
    }

    /// Revoked agent ids with their revocation times, sorted by id.
    pub fn revoked(&self) -> Result<Vec<(String, SystemTime)>, PkiError> {
        Ok(self.revocations.list()?)
    }

    /// The server side of the gRPC port: our certificate chain and key, and our CA as the
    /// only root for client certificates, which are optional at the TLS layer (see the
    /// module doc) but verified whenever presented. Handshakes are bounded by
    /// [`HANDSHAKE_TIMEOUT`].
    pub fn server_tls(&self) -> Result<tonic::transport::ServerTlsConfig, PkiError> {
        tls::install_crypto_provider();
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.server_chain_pem,
                &self.server_key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT))
    }

    fn issue(
        &self,
        public_key: PublicKey,
        agent_id: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        if !valid_agent_id(agent_id) {
            return Err(PkiError::BadAgentId(agent_id.to_string()));
        }
        if validity.is_zero() || validity > MAX_AGENT_VALIDITY {
            return Err(PkiError::BadValidity);
        }
        // A fresh parameter set: the CSR's subject, SANs, key usages, EKUs and basic
        // constraints are dropped here, whatever they asked for.
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, agent_id);
        params.subject_alt_names = Vec::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, now, validity, Some(self.ca_not_after))?;
        let request = CertificateSigningRequestParams { params, public_key };
        let leaf = request.signed_by(&self.issuer).map_err(gen_err)?;
        let mut chain = leaf.pem();
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&self.ca_pem);
        Ok(chain)
    }
}

/// The agent id (subject CN, `agt-…`) of a client certificate's DER. Call it only on a
/// certificate the TLS layer verified (`request.peer_certs()`); it checks nothing else.
pub fn agent_id_from_cert(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let mut names = cert.subject().iter_common_name();
    let cn = names
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(PkiError::NoAgentId)?;
    // Two CNs would make "the" identity ambiguous; we never issue such a certificate.
    if names.next().is_some() || !valid_agent_id(cn) {
        return Err(PkiError::NoAgentId);
    }
    Ok(cn.to_string())
}

/// Whether `id` is an agent id as we issue them: `agt-` then 1–60 of `a-z 0-9 -`.
pub fn valid_agent_id(id: &str) -> bool {
    id.len() > AGENT_ID_PREFIX.len()
        && id.len() <= MAX_AGENT_ID_LEN
        && id.starts_with(AGENT_ID_PREFIX)
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Why an enrollment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollRefused {
    /// The token is unknown, expired or used up (gRPC `UNAUTHENTICATED`).
    #[error("enrollment token refused: {0}")]
    Token(TokenError),
    /// The CSR is missing, too large, malformed or wrongly signed (`INVALID_ARGUMENT`).
    #[error("{0}")]
    Csr(PkiError),
    /// Our own state failed: token file, signing (`INTERNAL`; details are logged, not sent).
    #[error("enrollment failed: {0}")]
    Internal(String),
}

impl From<EnrollRefused> for tonic::Status {
    fn from(e: EnrollRefused) -> tonic::Status {
        match &e {
            EnrollRefused::Token(_) => tonic::Status::unauthenticated(e.to_string()),
            EnrollRefused::Csr(_) => tonic::Status::invalid_argument(e.to_string()),
            EnrollRefused::Internal(_) => {
                tonic::Status::internal("enrollment failed on the collector; see its log")
            }
        }
    }
}

/// Handles an `Enroll` request: checks the CSR (before touching the token, so a bad CSR
/// does not burn a use), consumes one use of the token, and signs the CSR's key for a fresh
/// agent id `agt-<uuid v4>` valid for [`AGENT_CERT_VALIDITY`]. Blocking (file lock and
/// rewrite): call it from `spawn_blocking` in async code.
pub fn enroll(
    pki: &Pki,
    tokens: &Tokens,
    req: &EnrollRequest,
    now: SystemTime,
) -> Result<EnrollResponse, EnrollRefused> {
    let public_key = parse_csr(&req.csr_pem).map_err(EnrollRefused::Csr)?;
    tokens
        .consume_enrollment(&req.token, now)
        .map_err(|e| match e {
            TokenError::Unknown | TokenError::Expired | TokenError::UsedUp => {
                EnrollRefused::Token(e)
            }
            other => {
                tracing::error!(error = %other, "Enrollment token check failed.");
                EnrollRefused::Internal(other.to_string())
            }
        })?;
    let agent_id = format!("{AGENT_ID_PREFIX}{}", uuid::Uuid::new_v4());
    let chain = pki
        .issue(public_key, &agent_id, AGENT_CERT_VALIDITY, now)
        .map_err(|e| {
            tracing::error!(error = %e, "Signing an enrolled agent's certificate failed.");
            EnrollRefused::Internal(e.to_string())
        })?;
    let hostname = req
        .identity
        .as_ref()
        .and_then(|i| i.hostname.as_deref())
        .unwrap_or("")
        .chars()
        .take(128)
        .collect::<String>();
    let instance_id = req.instance_id.chars().take(64).collect::<String>();
    tracing::info!(%agent_id, %instance_id, %hostname, "Agent enrolled.");
    Ok(EnrollResponse {
        agent_id,
        certificate_chain_pem: chain,
        ca_pem: pki.ca_pem().to_string(),
    })
}

/// The public key of a PEM CSR whose self-signature rcgen verified.
fn parse_csr(csr_pem: &str) -> Result<PublicKey, PkiError> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(PkiError::CsrTooLarge(csr_pem.len()));
    }
    if csr_pem.trim().is_empty() {
        return Err(PkiError::BadCsr("empty".into()));
    }
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|csr| csr.public_key)
        .map_err(|e| PkiError::BadCsr(e.to_string()))
}

/// notBefore = now − [`CLOCK_SKEW`], notAfter = now + validity, capped at `cap` (unix s).
fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    validity: Duration,
    cap: Option<i64>,
) -> Result<(), PkiError> {
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Generate("the clock is before 1970".into()))?
        .as_secs();
    let now_s = i64::try_from(now_s).map_err(|_| PkiError::BadValidity)?;
    let skew = i64::try_from(CLOCK_SKEW.as_secs()).unwrap_or(300);
    let life = i64::try_from(validity.as_secs()).map_err(|_| PkiError::BadValidity)?;
    let mut not_after = now_s.checked_add(life).ok_or(PkiError::BadValidity)?;
    if let Some(cap) = cap {
        if cap <= now_s {
            return Err(PkiError::CaExpired);
        }
        not_after = not_after.min(cap);
    }
    let to_time = |s: i64| {
        x509_parser::time::ASN1Time::from_timestamp(s)
            .map(|t| t.to_datetime())
            .map_err(|_| PkiError::BadValidity)
    };
    params.not_before = to_time(now_s - skew)?;
    params.not_after = to_time(not_after)?;
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes = rand::random::<[u8; 16]>();
    // Positive and of full length (RFC 5280: positive, at most 20 octets).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn gen_err(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_pem(dir: &Path, name: &'static str) -> Result<String, PkiError> {
    let path = dir.join(name);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PkiError::NotInitialized(dir.to_path_buf(), name));
        }
        Err(e) => return Err(io(&path, e)),
    };
    if meta.len() > tls::MAX_PEM_BYTES as u64 {
        return Err(PkiError::Pem {
            what: path.display().to_string(),
            source: PemError::TooLarge(usize::try_from(meta.len()).unwrap_or(usize::MAX)),
        });
    }
    std::fs::read_to_string(&path).map_err(|e| io(&path, e))
}

fn first_cert(pem: &str, path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    tls::certs_from_pem(pem)
        .map_err(|source| PkiError::Pem {
            what: path.display().to_string(),
            source,
        })?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::BadCertificate(format!("{} holds no certificate", path.display())))
}

/// Refuses a key that is not the certificate's (files swapped or replaced by hand).
fn check_key_matches(
    cert: &CertificateDer<'static>,
    key_pem: &str,
    key_path: &Path,
) -> Result<(), PkiError> {
    let key_der = tls::private_key_from_pem(key_pem).map_err(|source| PkiError::Pem {
        what: key_path.display().to_string(),
        source,
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| PkiError::KeyMismatch(format!("{}: {e}", key_path.display())))?;
    rustls::sign::CertifiedKey::new(vec![cert.clone()], signing_key)
        .keys_match()
        .map_err(|e| {
            PkiError::KeyMismatch(format!(
                "{} does not belong to its certificate: {e}",
                key_path.display()
            ))
        })
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "Private key is readable by other users; it should be mode 0600.");
        }
    }
}

/// Creates `path` with `bytes`, failing if it exists: written to a temporary file, synced,
/// then hard-linked into place (link(2) refuses an existing target atomically).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(
            PkiError::AlreadyInitialized(path.parent().unwrap_or(path).to_path_buf()),
        ),
        Err(e) => Err(io(path, e)),
    }
}

#[cfg(test)]
mod tests;
