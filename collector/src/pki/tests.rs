#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use proptest::prelude::*;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{ServerName, UnixTime};
use x509_parser::extensions::ParsedExtension;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

fn new_pki() -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(&dir.path().join("pki"), &names()).unwrap();
    (dir, pki)
}

fn csr_with(params: CertificateParams) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn plain_csr() -> (KeyPair, String) {
    csr_with(CertificateParams::default())
}

fn ca_roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in tls::certs_from_pem(pki.ca_pem()).unwrap() {
        roots.add(c).unwrap();
    }
    Arc::new(roots)
}

fn verify_as_client(pki: &Pki, chain_pem: &str, at: SystemTime) -> Result<(), rustls::Error> {
    tls::install_crypto_provider();
    let chain = tls::certs_from_pem(chain_pem).unwrap();
    let verifier = WebPkiClientVerifier::builder(ca_roots(pki))
        .build()
        .unwrap();
    verifier
        .verify_client_cert(
            &chain[0],
            &chain[1..],
            UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap()),
        )
        .map(|_| ())
}

#[test]
fn init_writes_private_files_and_refuses_to_overwrite() {
    let (dir, pki) = new_pki();
    let pdir = dir.path().join("pki");
    for (f, mode) in [
        (CA_KEY, 0o600),
        (SERVER_KEY, 0o600),
        (CA_CERT, 0o644),
        (SERVER_CERT, 0o644),
    ] {
        let m = std::fs::metadata(pdir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    assert_eq!(
        std::fs::metadata(&pdir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let before = std::fs::read(pdir.join(CA_KEY)).unwrap();
    assert!(matches!(
        Pki::init(&pdir, &names()),
        Err(PkiError::AlreadyInitialized(_))
    ));
    assert_eq!(std::fs::read(pdir.join(CA_KEY)).unwrap(), before);

    let reopened = Pki::open(&pdir).unwrap();
    assert_eq!(reopened.ca_fingerprint(), pki.ca_fingerprint());
    assert_eq!(reopened.ca_pem(), pki.ca_pem());
    let der = tls::certs_from_pem(pki.ca_pem()).unwrap().remove(0);
    assert_eq!(pki.ca_fingerprint(), sha256_hex(&der));
    assert_eq!(pki.ca_fingerprint().len(), 64);
    assert!(!format!("{pki:?}").contains("PRIVATE"));
}

#[test]
fn ca_and_server_certificates_have_the_promised_policy() {
    let (_dir, pki) = new_pki();
    let ca_der = tls::certs_from_pem(pki.ca_pem()).unwrap().remove(0);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert!(ca.is_ca());
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let life = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
    assert!(life >= CA_VALIDITY.as_secs() as i64);

    // The server chain verifies for every name it was made for, and for no other.
    tls::install_crypto_provider();
    let chain = tls::certs_from_pem(&pki.server_chain_pem).unwrap();
    assert_eq!(chain.len(), 2, "leaf then CA");
    let verifier = rustls::client::WebPkiServerVerifier::builder(ca_roots(&pki))
        .build()
        .unwrap();
    let now = UnixTime::now();
    for name in ["localhost", "127.0.0.1", "::1"] {
        let sn = ServerName::try_from(name).unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &sn, &[], now)
            .unwrap();
    }
    let other = ServerName::try_from("example.com").unwrap();
    assert!(
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &other, &[], now)
            .is_err()
    );
}

#[test]
fn init_rejects_bad_server_names() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Pki::init(dir.path(), &[]),
        Err(PkiError::ServerNameCount(0))
    ));
    assert!(Pki::init(&dir.path().join("a"), &["bad name!".into()]).is_err());
}

#[test]
fn open_refuses_missing_or_mismatched_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Pki::open(dir.path()),
        Err(PkiError::NotInitialized(..))
    ));
    let (dir2, _pki) = new_pki();
    let pdir = dir2.path().join("pki");
    // Swap in a key that is not the CA's.
    std::fs::write(
        pdir.join(CA_KEY),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    assert!(matches!(Pki::open(&pdir), Err(PkiError::KeyMismatch(_))));
}

#[test]
fn csr_policy_is_overwritten() {
    let (_dir, pki) = new_pki();
    // A CSR asking for everything: CA, serverAuth, certificate signing, a SAN, a subject.
    let mut greedy = CertificateParams::new(vec!["collector.example".to_string()]).unwrap();
    greedy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    greedy.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    greedy.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::Any,
    ];
    greedy.distinguished_name = DistinguishedName::new();
    greedy
        .distinguished_name
        .push(DnType::CommonName, "agt-someone-else");
    greedy
        .subject_alt_names
        .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
    let (key, csr) = csr_with(greedy);

    let now = SystemTime::now();
    let chain = pki.sign_agent_csr_at(&csr, "agt-me", DAY, now).unwrap();
    let certs = tls::certs_from_pem(&chain).unwrap();
    assert_eq!(certs.len(), 2, "leaf then CA");
    assert_eq!(sha256_hex(&certs[1]), pki.ca_fingerprint());
    let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();

    assert!(!leaf.is_ca());
    let bc = leaf.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca, "CA:FALSE is explicit");
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(!ku.key_cert_sign() && !ku.crl_sign() && ku.digital_signature());
    assert!(
        !leaf.extensions().iter().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::SubjectAlternativeName(_)
        )),
        "no SAN copied from the CSR"
    );
    assert_eq!(agent_id_from_cert(&certs[0]).unwrap(), "agt-me");
    // The key is the CSR's.
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    // Validity: now - 5 min .. now + 1 day.
    let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(leaf.validity().not_before.timestamp(), now_s - 300);
    assert_eq!(leaf.validity().not_after.timestamp(), now_s + 86_400);
    assert_eq!(
        leaf.issuer(),
        x509_parser::parse_x509_certificate(&certs[1])
            .unwrap()
            .1
            .subject()
    );

    verify_as_client(&pki, &chain, now).unwrap();
    // Two certificates never share a serial.
    let chain2 = pki.sign_agent_csr_at(&csr, "agt-me", DAY, now).unwrap();
    let c2 = tls::certs_from_pem(&chain2).unwrap();
    let (_, leaf2) = x509_parser::parse_x509_certificate(&c2[0]).unwrap();
    assert_ne!(leaf.raw_serial(), leaf2.raw_serial());
}

#[test]
fn agent_certificate_never_outlives_the_ca_and_expires() {
    let (_dir, pki) = new_pki();
    let (_k, csr) = plain_csr();
    let chain = pki
        .sign_agent_csr(&csr, "agt-a", MAX_AGENT_VALIDITY)
        .unwrap();
    let certs = tls::certs_from_pem(&chain).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
    assert!(leaf.validity().not_after.timestamp() <= pki.ca_not_after);

    let past = SystemTime::now() - 3 * DAY;
    let old = pki.sign_agent_csr_at(&csr, "agt-a", DAY, past).unwrap();
    assert!(verify_as_client(&pki, &old, SystemTime::now()).is_err());
    assert!(verify_as_client(&pki, &old, past + DAY / 2).is_ok());
    assert!(matches!(
        pki.sign_agent_csr(&csr, "agt-a", Duration::ZERO),
        Err(PkiError::BadValidity)
    ));
}

#[test]
fn bad_csrs_and_ids_are_refused() {
    let (_dir, pki) = new_pki();
    let (_k, csr) = plain_csr();
    for id in [
        "",
        "agt-",
        "host-1",
        "agt-UPPER",
        "agt-a b",
        &format!("agt-{}", "a".repeat(61)),
    ] {
        assert!(
            matches!(
                pki.sign_agent_csr(&csr, id, DAY),
                Err(PkiError::BadAgentId(_))
            ),
            "{id}"
        );
    }
    assert!(matches!(
        pki.sign_agent_csr("", "agt-a", DAY),
        Err(PkiError::BadCsr(_))
    ));
    assert!(matches!(
        pki.sign_agent_csr("garbage", "agt-a", DAY),
        Err(PkiError::BadCsr(_))
    ));
    let huge = "A".repeat(MAX_CSR_BYTES + 1);
    assert!(matches!(
        pki.sign_agent_csr(&huge, "agt-a", DAY),
        Err(PkiError::CsrTooLarge(_))
    ));

    // A CSR whose signature does not match its content (someone else's key, altered body).
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // Flip a bit in the middle of the public key (inside the signed info).
    let mid = der.len() / 2;
    der[mid] ^= 0x01;
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    assert!(matches!(
        pki.sign_agent_csr(&tampered, "agt-a", DAY),
        Err(PkiError::BadCsr(_))
    ));
}

use rustls_pki_types::pem::PemObject;

fn pem_encode(label: &str, der: &[u8]) -> String {
    // Minimal base64 for tests; the code under test never encodes PEM itself.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let body: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

#[test]
fn pem_encoder_round_trips() {
    let der: Vec<u8> = (0u8..=200).collect();
    let pem = pem_encode("CERTIFICATE", &der);
    let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(back.as_ref(), der.as_slice());
}

#[test]
fn agent_id_is_read_only_from_agent_certificates() {
    let (_dir, pki) = new_pki();
    let server = tls::certs_from_pem(&pki.server_chain_pem)
        .unwrap()
        .remove(0);
    assert!(matches!(
        agent_id_from_cert(&server),
        Err(PkiError::NoAgentId)
    ));
    let ca = tls::certs_from_pem(pki.ca_pem()).unwrap().remove(0);
    assert!(agent_id_from_cert(&ca).is_err());
    assert!(agent_id_from_cert(b"not a certificate").is_err());
}

#[test]
fn revoke_is_seen_by_a_second_instance() {
    let (dir, pki) = new_pki();
    let other = Pki::open(&dir.path().join("pki")).unwrap();
    assert!(!other.is_revoked("agt-x"));
    pki.revoke("agt-x").unwrap();
    assert!(other.is_revoked("agt-x"));
    assert!(!other.is_revoked("agt-y"));
    assert!(matches!(pki.revoke("nope"), Err(PkiError::BadAgentId(_))));
    assert_eq!(other.revoked().unwrap().len(), 1);
}

#[test]
fn enroll_consumes_a_use_only_for_a_good_csr() {
    let (dir, pki) = new_pki();
    let tokens = Tokens::open(dir.path()).unwrap();
    let now = SystemTime::now();
    let token = tokens.create_enrollment(1, DAY, now).unwrap();
    let (_k, csr) = plain_csr();

    let bad = EnrollRequest {
        token: token.clone(),
        csr_pem: "junk".into(),
        ..Default::default()
    };
    let status = tonic::Status::from(enroll(&pki, &tokens, &bad, now).unwrap_err());
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let good = EnrollRequest {
        token: token.clone(),
        csr_pem: csr.clone(),
        instance_id: "i".into(),
        ..Default::default()
    };
    let resp = enroll(&pki, &tokens, &good, now).unwrap();
    assert!(valid_agent_id(&resp.agent_id));
    assert_eq!(resp.ca_pem, pki.ca_pem());
    let leaf = tls::certs_from_pem(&resp.certificate_chain_pem)
        .unwrap()
        .remove(0);
    assert_eq!(agent_id_from_cert(&leaf).unwrap(), resp.agent_id);

    let again = tonic::Status::from(enroll(&pki, &tokens, &good, now).unwrap_err());
    assert_eq!(again.code(), tonic::Code::Unauthenticated);
    let unknown = EnrollRequest {
        token: "cmdb-enroll-0000".into(),
        csr_pem: csr,
        ..Default::default()
    };
    let status = tonic::Status::from(enroll(&pki, &tokens, &unknown, now).unwrap_err());
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[test]
fn server_tls_builds() {
    let (_dir, pki) = new_pki();
    pki.server_tls().unwrap();
}

proptest! {
    #[test]
    fn agent_id_from_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = agent_id_from_cert(&bytes);
    }

    #[test]
    fn csr_parsing_of_arbitrary_text_never_panics(s in ".{0,600}") {
        prop_assert!(parse_csr(&s).is_err());
    }

    #[test]
    fn agent_ids_we_mint_are_valid(bytes in any::<[u8; 16]>()) {
        let id = format!("{AGENT_ID_PREFIX}{}", uuid::Builder::from_random_bytes(bytes).into_uuid());
        prop_assert!(valid_agent_id(&id));
    }
}
