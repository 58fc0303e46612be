#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair,
};

use super::*;

struct Ca {
    pem: String,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        issuer: Issuer::new(p, key),
    }
}

/// Signs the CSR's key the way the collector does (or not, per `eku`).
fn sign(ca: &Ca, csr_pem: &str, cn: &str, eku: ExtendedKeyUsagePurpose) -> String {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![eku];
    let req = CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    };
    format!("{}{}", req.signed_by(&ca.issuer).unwrap().pem(), ca.pem)
}

const ID: &str = "agt-0b7e4c1a-5d2f-4e3b-9a8c-1f2e3d4c5b6a";

fn response(chain: String, ca: &Ca, id: &str) -> EnrollResponse {
    EnrollResponse {
        agent_id: id.into(),
        certificate_chain_pem: chain,
        ca_pem: ca.pem.clone(),
    }
}

#[test]
fn a_good_answer_is_accepted_with_a_ca_file_or_a_pin() {
    let ca = ca();
    let (key, csr) = new_key_and_csr().unwrap();
    let chain = sign(&ca, &csr, ID, ExtendedKeyUsagePurpose::ClientAuth);
    let resp = response(chain, &ca, ID);
    let by_file = check_response(&resp, &ServerTrust::CaPem(ca.pem.clone()), &key).unwrap();
    assert_eq!(by_file.ca_pem, ca.pem);
    let pin = tls::sha256(&ca.der);
    let by_pin = check_response(&resp, &ServerTrust::PinnedCa(pin), &key).unwrap();
    assert_eq!(by_pin.ca_pem, ca.pem);
}

#[test]
fn answers_that_do_not_check_out_are_refused() {
    let ca1 = ca();
    let other = ca();
    let (key, csr) = new_key_and_csr().unwrap();
    let good = sign(&ca1, &csr, ID, ExtendedKeyUsagePurpose::ClientAuth);
    let trust = ServerTrust::CaPem(ca1.pem.clone());
    let refused = |resp: &EnrollResponse, trust: &ServerTrust, key: &str| {
        matches!(
            check_response(resp, trust, key),
            Err(EnrollError::BadResponse(_))
        )
    };

    // Signed by another CA.
    let foreign = sign(&other, &csr, ID, ExtendedKeyUsagePurpose::ClientAuth);
    assert!(refused(&response(foreign, &ca1, ID), &trust, &key));
    // Not for our key.
    let (_, other_csr) = new_key_and_csr().unwrap();
    let not_ours = sign(&ca1, &other_csr, ID, ExtendedKeyUsagePurpose::ClientAuth);
    assert!(refused(&response(not_ours, &ca1, ID), &trust, &key));
    // Not a client certificate.
    let server = sign(&ca1, &csr, ID, ExtendedKeyUsagePurpose::ServerAuth);
    assert!(refused(&response(server, &ca1, ID), &trust, &key));
    // Id and certificate disagree; id malformed.
    let other_id = "agt-11111111-2222-4333-8444-555555555555";
    assert!(refused(
        &response(good.clone(), &ca1, other_id),
        &trust,
        &key
    ));
    assert!(refused(&response(good.clone(), &ca1, "root"), &trust, &key));
    // Pinned mode: the CA sent is not the pinned one, or more than one.
    let pin = ServerTrust::PinnedCa(tls::sha256(&other.der));
    assert!(refused(&response(good.clone(), &ca1, ID), &pin, &key));
    let mut two = response(good.clone(), &ca1, ID);
    two.ca_pem = format!("{}{}", ca1.pem, other.pem);
    assert!(refused(
        &two,
        &ServerTrust::PinnedCa(tls::sha256(&ca1.der)),
        &key
    ));
    // Garbage.
    assert!(refused(&response("junk".into(), &ca1, ID), &trust, &key));
    assert!(refused(
        &response("x".repeat(MAX_RESPONSE_PEM + 1), &ca1, ID),
        &trust,
        &key
    ));
}

#[test]
fn csr_carries_a_p256_key_and_asks_for_nothing() {
    let (key_pem, csr) = new_key_and_csr().unwrap();
    let parsed = CertificateSigningRequestParams::from_pem(&csr).unwrap();
    assert_eq!(*parsed.public_key.algorithm(), PKCS_ECDSA_P256_SHA256);
    assert!(parsed.params.extended_key_usages.is_empty());
    assert_eq!(parsed.params.is_ca, IsCa::NoCa);
    let key = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(
        rcgen::PublicKeyData::der_bytes(&parsed.public_key),
        key.public_key_raw()
    );
    assert!(!csr.contains("PRIVATE"));
}

#[test]
fn staged_files_vanish_unless_committed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let files = TlsFiles::in_dir(&state);
    {
        let mut staged = Staged::new(&state).unwrap();
        staged.write(&files.key, b"k", 0o600).unwrap();
        staged.write(&files.cert, b"c", 0o644).unwrap();
    }
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut staged = Staged::new(&state).unwrap();
    staged.write(&files.key, b"k", 0o600).unwrap();
    staged.write(&files.cert, b"c", 0o644).unwrap();
    staged.commit().unwrap();
    assert_eq!(std::fs::read(&files.key).unwrap(), b"k");
    assert_eq!(
        std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 2);
}

#[test]
fn bad_options_fail_before_any_network_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = |token: &str, ca: CaTrust| EnrollOptions {
        collector: "https://127.0.0.1:9".into(),
        token: token.into(),
        ca,
        state_dir: dir.path().join("state"),
        identity: HostIdentity::default(),
        instance_id: "i".into(),
        agent_version: "0".into(),
    };
    let pin = CaTrust::Sha256("00".repeat(32));
    assert!(matches!(
        rt.block_on(enroll(opts("", pin.clone()))),
        Err(EnrollError::InvalidOptions(_))
    ));
    assert!(matches!(
        rt.block_on(enroll(opts("t", CaTrust::Sha256("abc".into())))),
        Err(EnrollError::Tls(TlsError::BadFingerprint(_)))
    ));
    assert!(matches!(
        rt.block_on(enroll(opts(
            "t",
            CaTrust::File(dir.path().join("none.pem"))
        ))),
        Err(EnrollError::Tls(TlsError::Read { .. }))
    ));
    assert!(!dir.path().join("state").exists());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_answers_never_panic(chain in ".{0,400}", ca_pem in ".{0,200}", id in ".{0,80}") {
        let (key, _) = new_key_and_csr().unwrap();
        let resp = EnrollResponse { agent_id: id, certificate_chain_pem: chain, ca_pem };
        prop_assert!(check_response(&resp, &ServerTrust::PinnedCa([0; 32]), &key).is_err());
    }
}
