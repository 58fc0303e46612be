//! `cmdb-agent enroll`: exchanges a one-time token for a client certificate.
//!
//! The agent makes an ECDSA P-256 key pair here and sends only a CSR; the private key never
//! leaves the host. The collector is trusted through the CA file the operator gives, or
//! through the pinned SHA-256 of the CA certificate that `cmdb-collector token create`
//! prints (see [`crate::tls::PinnedCaVerifier`]). The answer is checked before anything is
//! kept: the leaf must verify as a client certificate against the trusted CA, carry our
//! public key, and name the agent id the collector returned.
//!
//! Files (in `state_dir`, created 0700): `key.pem` (0600), `cert.pem` (the chain, leaf
//! first), `ca.pem` (the trusted CA). Each is written to a temporary file and synced first,
//! then renamed into place, key first: a crash leaves either the old identity or the new
//! one (or, between renames, a key that does not match cert.pem, which `tls::connect`
//! reports by name; enrolling again repairs it). Enrolling again replaces the identity.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cmdb_proto::model::HostIdentity;
use cmdb_proto::v1::agent_service_client::AgentServiceClient;
use cmdb_proto::v1::{EnrollRequest, EnrollResponse};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::tls::{self, ServerTrust, TlsError, TlsFiles};

/// TCP + TLS setup bound.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the Enroll call itself.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest certificate chain or CA text accepted from the collector.
const MAX_RESPONSE_PEM: usize = 256 * 1024;
const MAX_TOKEN_LEN: usize = 256;
const AGENT_ID_PREFIX: &str = "agt-";
const MAX_AGENT_ID_LEN: usize = 64;

/// How the collector is trusted while enrolling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaTrust {
    /// The CA certificate(s) in this PEM file (`--ca-file`).
    File(PathBuf),
    /// The SHA-256 of the CA certificate's DER, hex (`--ca-sha256`).
    Sha256(String),
}

/// What `enroll` needs.
#[derive(Clone, Debug)]
pub struct EnrollOptions {
    /// The collector's gRPC endpoint, `https://host:port`.
    pub collector: String,
    /// The enrollment token (`cmdb-enroll-…`).
    pub token: String,
    /// How to trust the collector.
    pub ca: CaTrust,
    /// Where key, certificate and CA are kept.
    pub state_dir: PathBuf,
    /// This host's identity keys, for the collector's records.
    pub identity: HostIdentity,
    /// The agent's instance id.
    pub instance_id: String,
    /// The agent's version.
    pub agent_version: String,
}

/// The result of a successful enrollment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// The id the collector gave this agent (the certificate's CN).
    pub agent_id: String,
    /// Where the TLS material was written.
    pub files: TlsFiles,
}

/// Why enrollment failed. Nothing in the state directory changes on failure.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// An option is unusable (empty or oversized token).
    #[error("{0}")]
    InvalidOptions(String),
    /// The state directory or a file in it could not be written.
    #[error("{path}: {source}")]
    StateDir {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The CA file, fingerprint or connection failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The key pair or CSR could not be made.
    #[error("cannot make the key pair or CSR: {0}")]
    Key(String),
    /// The collector refused the token (unknown, expired or used up).
    #[error("the collector refused the enrollment token: {0}")]
    TokenRefused(String),
    /// The collector refused the request (CSR) as invalid.
    #[error("the collector refused the request: {0}")]
    Refused(String),
    /// The call failed otherwise (network, collector error).
    #[error("enrollment call failed: {0}")]
    Rpc(String),
    /// The call took longer than [`RPC_TIMEOUT`].
    #[error("the collector did not answer within {RPC_TIMEOUT:?}")]
    Timeout,
    /// The collector's answer does not check out; nothing was kept.
    #[error("the collector's answer is not acceptable: {0}")]
    BadResponse(String),
}

/// A fresh ECDSA P-256 key (PKCS#8 PEM) and a CSR for it (PEM). The CSR asks for nothing:
/// the collector decides the certificate's content.
pub fn new_key_and_csr() -> Result<(String, String), EnrollError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "cmdb-agent enrollment");
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    Ok((key.serialize_pem(), csr))
}

/// Enrolls this agent: see the module doc. On success `state_dir` holds `key.pem`,
/// `cert.pem` and `ca.pem`, ready for [`crate::tls::connect`].
pub async fn enroll(opts: EnrollOptions) -> Result<Enrolled, EnrollError> {
    tls::install_crypto_provider();
    if opts.token.trim().is_empty() || opts.token.len() > MAX_TOKEN_LEN {
        return Err(EnrollError::InvalidOptions(
            "the enrollment token is empty or too long".into(),
        ));
    }
    let trust = match &opts.ca {
        CaTrust::File(path) => {
            let pem = tls::read_pem_file(path)?;
            tls::parse_certs(&pem, &path.display().to_string())?;
            ServerTrust::CaPem(pem)
        }
        CaTrust::Sha256(hex) => ServerTrust::PinnedCa(tls::parse_fingerprint(hex)?),
    };

    let files = TlsFiles::in_dir(&opts.state_dir);
    let mut staged = Staged::new(&opts.state_dir)?;
    let (key_pem, csr_pem) = new_key_and_csr()?;
    // Written (0600, synced) before the call: a state directory we cannot write fails here,
    // not after the collector spent a token use on us.
    staged.write(&files.key, key_pem.as_bytes(), 0o600)?;

    let channel = tls::connect_for_enrollment(&opts.collector, &trust, CONNECT_TIMEOUT).await?;
    let request = EnrollRequest {
        token: opts.token.clone(),
        csr_pem,
        identity: Some((&opts.identity).into()),
        agent_version: opts.agent_version.clone(),
        instance_id: opts.instance_id.clone(),
    };
    let mut client = AgentServiceClient::new(channel);
    let response = match tokio::time::timeout(RPC_TIMEOUT, client.enroll(request)).await {
        Err(_) => return Err(EnrollError::Timeout),
        Ok(Err(status)) => {
            let message = status.message().to_string();
            return Err(match status.code() {
                tonic::Code::Unauthenticated => EnrollError::TokenRefused(message),
                tonic::Code::InvalidArgument => EnrollError::Refused(message),
                code => EnrollError::Rpc(format!("{code:?}: {message}")),
            });
        }
        Ok(Ok(r)) => r.into_inner(),
    };

    let accepted = check_response(&response, &trust, &key_pem)?;
    staged.write(
        &files.cert,
        response.certificate_chain_pem.as_bytes(),
        0o644,
    )?;
    staged.write(&files.ca, accepted.ca_pem.as_bytes(), 0o644)?;
    staged.commit()?;
    tracing::info!(agent_id = %response.agent_id, dir = %opts.state_dir.display(), "Agent enrolled.");
    Ok(Enrolled {
        agent_id: response.agent_id,
        files,
    })
}

/// What is kept from a checked response.
#[derive(Debug)]
struct Accepted {
    /// The CA to trust from now on (PEM).
    ca_pem: String,
}

/// Checks the collector's answer against what we trust and the key we made.
fn check_response(
    resp: &EnrollResponse,
    trust: &ServerTrust,
    key_pem: &str,
) -> Result<Accepted, EnrollError> {
    let bad = |m: String| EnrollError::BadResponse(m);
    if resp.certificate_chain_pem.len() > MAX_RESPONSE_PEM || resp.ca_pem.len() > MAX_RESPONSE_PEM {
        return Err(bad("certificate text too large".into()));
    }
    if !valid_agent_id(&resp.agent_id) {
        return Err(bad(format!(
            "agent id {:?} is not an agent id",
            resp.agent_id.chars().take(80).collect::<String>()
        )));
    }
    let chain = tls::parse_certs(&resp.certificate_chain_pem, "certificate chain")
        .map_err(|e| bad(e.to_string()))?;

    let (roots, ca_pem) = match trust {
        ServerTrust::CaPem(pem) => (tls::parse_certs(pem, "CA file")?, pem.clone()),
        ServerTrust::PinnedCa(pin) => {
            // The CA that will be trusted for good must be the pinned one, exactly.
            let cas = tls::parse_certs(&resp.ca_pem, "CA").map_err(|e| bad(e.to_string()))?;
            match cas.as_slice() {
                [only] if tls::sha256(only) == *pin => (cas, resp.ca_pem.clone()),
                _ => {
                    return Err(bad(
                        "the CA sent is not the one whose fingerprint was pinned".into(),
                    ));
                }
            }
        }
    };

    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root)
            .map_err(|e| bad(format!("trusted CA unusable: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| bad(e.to_string()))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| bad("empty certificate chain".into()))?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| {
            bad(format!(
                "the certificate does not verify against the trusted CA: {e}"
            ))
        })?;

    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad(e.to_string()))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing_key)
        .keys_match()
        .map_err(|e| bad(format!("the certificate is not for our key: {e}")))?;

    if !names_agent(leaf, &resp.agent_id) {
        return Err(bad(format!(
            "the certificate does not name agent {}",
            resp.agent_id
        )));
    }
    Ok(Accepted { ca_pem })
}

/// Whether the leaf's DER contains the agent id. The agent carries no X.509 parser; the
/// collector writes the id as the subject CN and nothing else in our certificates could
/// hold an `agt-<uuid>` string, so this catches an answer whose id and certificate disagree.
fn names_agent(leaf: &CertificateDer<'_>, agent_id: &str) -> bool {
    let needle = agent_id.as_bytes();
    leaf.as_ref().windows(needle.len()).any(|w| w == needle)
}

fn valid_agent_id(id: &str) -> bool {
    id.len() > AGENT_ID_PREFIX.len()
        && id.len() <= MAX_AGENT_ID_LEN
        && id.starts_with(AGENT_ID_PREFIX)
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Files written beside their final names and renamed into place, in the order written,
/// by `commit`; dropped uncommitted, they are removed.
struct Staged {
    dir: PathBuf,
    pending: Vec<PathBuf>,
}

impl Staged {
    fn new(dir: &Path) -> Result<Staged, EnrollError> {
        let io = |source| EnrollError::StateDir {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        Ok(Staged {
            dir: dir.to_path_buf(),
            pending: Vec::new(),
        })
    }

    fn write(&mut self, final_path: &Path, bytes: &[u8], mode: u32) -> Result<(), EnrollError> {
        let tmp = tmp_path(final_path);
        let io = |source| EnrollError::StateDir {
            path: tmp.clone(),
            source,
        };
        // A leftover from an interrupted run may have another mode: start afresh.
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        self.pending.push(final_path.to_path_buf());
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    fn commit(mut self) -> Result<(), EnrollError> {
        // Bounded by the (three) files written; on error the rest stay staged for Drop.
        while !self.pending.is_empty() {
            let final_path = self.pending.remove(0);
            let tmp = tmp_path(&final_path);
            if let Err(source) = std::fs::rename(&tmp, &final_path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(EnrollError::StateDir {
                    path: final_path,
                    source,
                });
            }
        }
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| EnrollError::StateDir {
                path: self.dir.clone(),
                source,
            })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Uncommitted (or partly committed) files: remove what is still staged.
        for final_path in &self.pending {
            let _ = std::fs::remove_file(tmp_path(final_path));
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(".enroll-tmp");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests;
