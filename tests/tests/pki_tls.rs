//! Trust bootstrap over real TLS on 127.0.0.1: a minimal collector (`Enroll` through
//! `cmdb_collector::pki::enroll`, `Connect` that insists on a verified client certificate
//! the way ingest does) and the real agent enrollment and mTLS channel code. Certificates
//! are made at test time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cmdb_agent::enroll::{CaTrust, EnrollError, EnrollOptions, Enrolled, new_key_and_csr};
use cmdb_agent::tls::{self as agent_tls, ServerTrust, TlsFiles};
use cmdb_collector::pki::{self, Pki};
use cmdb_collector::tokens::Tokens;
use cmdb_proto::v1::agent_service_client::AgentServiceClient;
use cmdb_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use cmdb_proto::v1::{
    Ack, AgentMessage, CollectorMessage, EnrollRequest, EnrollResponse, Hello, agent_message,
    collector_message,
};
use tonic::codegen::tokio_stream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

const STEP: Duration = Duration::from_secs(15);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Bounds every network step of a test.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("step timed out")
}

// === test collector ===

struct Svc {
    pki: Arc<Pki>,
    tokens: Arc<Tokens>,
    /// Agent ids whose Connect got past authentication.
    connected: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl AgentService for Svc {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let (pki, tokens) = (Arc::clone(&self.pki), Arc::clone(&self.tokens));
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || pki::enroll(&pki, &tokens, &req, SystemTime::now()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
            .map_err(Status::from)
    }

    type ConnectStream = tokio_stream::Iter<std::vec::IntoIter<Result<CollectorMessage, Status>>>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        // What ingest does: no verified client certificate, no stream.
        let certs = request
            .peer_certs()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let agent_id = pki::agent_id_from_cert(&certs[0])
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        if self.pki.is_revoked(&agent_id) {
            return Err(Status::permission_denied("agent revoked"));
        }
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage {
                kind: Some(agent_message::Kind::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("Hello first")),
        };
        self.connected.lock().unwrap().push(agent_id);
        let ack = CollectorMessage {
            kind: Some(collector_message::Kind::Ack(Ack {
                up_to_seq: hello.last_acked_seq,
                max_rate_hint: 0,
                ..Default::default()
            })),
        };
        Ok(Response::new(tokio_stream::iter(vec![Ok(ack)])))
    }
}

struct Collector {
    dir: tempfile::TempDir,
    pki: Arc<Pki>,
    tokens: Arc<Tokens>,
    connected: Arc<Mutex<Vec<String>>>,
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Collector {
    async fn start() -> Collector {
        cmdb_collector::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let pki = Arc::new(Pki::init(&dir.path().join("pki"), &names).unwrap());
        let tokens = Arc::new(Tokens::open(dir.path()).unwrap());
        let connected = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let svc = Svc {
            pki: Arc::clone(&pki),
            tokens: Arc::clone(&tokens),
            connected: Arc::clone(&connected),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .tls_config(pki.server_tls().unwrap())
            .unwrap()
            .add_service(AgentServiceServer::new(svc))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            });
        let task = tokio::spawn(async move {
            server.await.unwrap();
        });
        Collector {
            dir,
            pki,
            tokens,
            connected,
            endpoint,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn ca_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("ca-for-agents.pem");
        std::fs::write(&path, self.pki.ca_pem()).unwrap();
        path
    }

    fn options(&self, token: &str, ca: CaTrust, state_dir: &Path) -> EnrollOptions {
        EnrollOptions {
            collector: self.endpoint.clone(),
            token: token.to_string(),
            ca,
            state_dir: state_dir.to_path_buf(),
            identity: cmdb_proto::model::HostIdentity {
                hostname: Some("test-host".into()),
                ..Default::default()
            },
            instance_id: "3f0e8a52-2d1b-4c7e-9a6f-0b1c2d3e4f50".into(),
            agent_version: "0.0.0-test".into(),
        }
    }

    fn connected(&self) -> Vec<String> {
        self.connected.lock().unwrap().clone()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            bounded(task).await.unwrap();
        }
    }
}

/// Opens a Connect stream with a Hello and returns the first answer.
async fn hello(channel: Channel) -> Result<CollectorMessage, Status> {
    let mut client = AgentServiceClient::new(channel);
    let outbound = tokio_stream::iter(vec![AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            last_acked_seq: 42,
            ..Default::default()
        })),
    }]);
    let mut inbound = client.connect(outbound).await?.into_inner();
    inbound
        .message()
        .await?
        .ok_or_else(|| Status::unknown("stream ended without an answer"))
}

/// Connects with `files` and says Hello; Ok only if the collector answered with an Ack.
async fn connect_and_hello(c: &Collector, files: &TlsFiles) -> Result<u64, String> {
    let channel = bounded(agent_tls::connect(
        &c.endpoint,
        files,
        Duration::from_secs(5),
    ))
    .await
    .map_err(|e| e.to_string())?;
    match bounded(hello(channel)).await {
        Ok(CollectorMessage {
            kind: Some(collector_message::Kind::Ack(ack)),
        }) => Ok(ack.up_to_seq),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

fn leaf_der(files: &TlsFiles) -> Vec<u8> {
    let pem = std::fs::read_to_string(&files.cert).unwrap();
    agent_tls::parse_certs(&pem, "cert.pem").unwrap()[0].to_vec()
}

/// Writes a client identity signed by `signer` (our CA or another) next to our CA.
fn identity_signed_by(
    signer: &Pki,
    ours: &Pki,
    dir: &Path,
    id: &str,
    validity: Duration,
    now: SystemTime,
) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let (key, csr) = new_key_and_csr().unwrap();
    let chain = signer.sign_agent_csr_at(&csr, id, validity, now).unwrap();
    let files = TlsFiles::in_dir(dir);
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.cert, chain).unwrap();
    std::fs::write(&files.ca, ours.ca_pem()).unwrap();
    files
}

// === tests ===

#[tokio::test]
async fn enroll_with_ca_file_then_connect_with_the_issued_certificate() {
    let c = Collector::start().await;
    let token = c
        .tokens
        .create_enrollment(1, HOUR, SystemTime::now())
        .unwrap();
    let state = c.dir.path().join("agent-state");

    let enrolled: Enrolled = bounded(cmdb_agent::enroll::enroll(c.options(
        &token,
        CaTrust::File(c.ca_file()),
        &state,
    )))
    .await
    .unwrap();
    assert!(enrolled.agent_id.starts_with("agt-"));
    assert_eq!(enrolled.files, TlsFiles::in_dir(&state));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&enrolled.files.key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&enrolled.files.ca).unwrap(),
        c.pki.ca_pem()
    );
    // The private key never travelled: the collector's side has no copy of it.
    let key = std::fs::read_to_string(&enrolled.files.key).unwrap();
    for entry in walk(c.dir.path().join("pki").as_path()) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        assert!(!text.contains(key.trim()), "{}", entry.display());
    }

    // The certificate names the agent, and it opens a stream.
    assert_eq!(
        pki::agent_id_from_cert(&leaf_der(&enrolled.files)).unwrap(),
        enrolled.agent_id
    );
    assert_eq!(connect_and_hello(&c, &enrolled.files).await, Ok(42));
    assert_eq!(c.connected(), vec![enrolled.agent_id.clone()]);

    // The token had one use.
    let again = bounded(cmdb_agent::enroll::enroll(c.options(
        &token,
        CaTrust::File(c.ca_file()),
        &c.dir.path().join("second-agent"),
    )))
    .await;
    assert!(
        matches!(again, Err(EnrollError::TokenRefused(_))),
        "{again:?}"
    );
    assert!(!c.dir.path().join("second-agent").join("cert.pem").exists());
    c.stop().await;
}

#[tokio::test]
async fn enroll_with_a_pinned_fingerprint_and_refuse_a_wrong_pin() {
    let c = Collector::start().await;
    let token = c
        .tokens
        .create_enrollment(1, HOUR, SystemTime::now())
        .unwrap();
    let state = c.dir.path().join("agent-state");

    // A wrong pin: the handshake fails, the token is not spent, nothing is written.
    let wrong = "ab".repeat(32);
    let refused = bounded(cmdb_agent::enroll::enroll(c.options(
        &token,
        CaTrust::Sha256(wrong),
        &state,
    )))
    .await;
    assert!(matches!(refused, Err(EnrollError::Tls(_))), "{refused:?}");
    assert!(!TlsFiles::in_dir(&state).cert.exists());
    assert!(!TlsFiles::in_dir(&state).key.exists());
    assert_eq!(c.tokens.list().unwrap()[0].uses_left, Some(1));

    // The fingerprint `token create` prints, in openssl's colon form for good measure.
    let fp = c.pki.ca_fingerprint();
    let colons: Vec<String> = (0..32)
        .map(|i| fp[2 * i..2 * i + 2].to_uppercase())
        .collect();
    let enrolled = bounded(cmdb_agent::enroll::enroll(c.options(
        &token,
        CaTrust::Sha256(colons.join(":")),
        &state,
    )))
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&enrolled.files.ca).unwrap(),
        c.pki.ca_pem()
    );
    assert_eq!(connect_and_hello(&c, &enrolled.files).await, Ok(42));
    c.stop().await;
}

#[tokio::test]
async fn no_client_certificate_is_refused_at_the_first_rpc() {
    let c = Collector::start().await;
    let channel = bounded(agent_tls::connect_for_enrollment(
        &c.endpoint,
        &ServerTrust::CaPem(c.pki.ca_pem().to_string()),
        Duration::from_secs(5),
    ))
    .await
    .unwrap();
    let status = bounded(hello(channel)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(c.connected().is_empty());
    c.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let c = Collector::start().await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::init(other_dir.path(), &["127.0.0.1".to_string()]).unwrap();
    let files = identity_signed_by(
        &other,
        &c.pki,
        &c.dir.path().join("foreign"),
        "agt-foreign",
        DAY,
        SystemTime::now(),
    );
    let result = connect_and_hello(&c, &files).await;
    assert!(result.is_err(), "{result:?}");
    assert!(c.connected().is_empty());
    c.stop().await;
}

#[tokio::test]
async fn an_expired_agent_certificate_is_refused() {
    let c = Collector::start().await;
    let three_days_ago = SystemTime::now() - 3 * DAY;
    let files = identity_signed_by(
        &c.pki,
        &c.pki,
        &c.dir.path().join("expired"),
        "agt-expired",
        DAY,
        three_days_ago,
    );
    let result = connect_and_hello(&c, &files).await;
    assert!(result.is_err(), "{result:?}");
    // The same CA and key with a current certificate gets in: it was the date.
    let fresh = identity_signed_by(
        &c.pki,
        &c.pki,
        &c.dir.path().join("fresh"),
        "agt-fresh",
        DAY,
        SystemTime::now(),
    );
    assert_eq!(connect_and_hello(&c, &fresh).await, Ok(42));
    assert_eq!(c.connected(), vec!["agt-fresh".to_string()]);
    c.stop().await;
}

#[tokio::test]
async fn used_up_and_expired_tokens_are_unauthenticated() {
    let c = Collector::start().await;
    let now = SystemTime::now();
    let used = c.tokens.create_enrollment(1, HOUR, now).unwrap();
    c.tokens.consume_enrollment(&used, now).unwrap();
    let expired = c.tokens.create_enrollment(5, HOUR, now - 2 * HOUR).unwrap();
    for token in [
        used,
        expired,
        "cmdb-enroll-0123456789abcdef0123456789abcdef".to_string(),
    ] {
        let state = c.dir.path().join("state");
        let r = bounded(cmdb_agent::enroll::enroll(c.options(
            &token,
            CaTrust::File(c.ca_file()),
            &state,
        )))
        .await;
        assert!(matches!(r, Err(EnrollError::TokenRefused(_))), "{r:?}");
        assert!(!TlsFiles::in_dir(&state).key.exists());
        assert!(!TlsFiles::in_dir(&state).cert.exists());
    }
    // And at the gRPC level, the status is UNAUTHENTICATED.
    let channel = bounded(agent_tls::connect_for_enrollment(
        &c.endpoint,
        &ServerTrust::CaPem(c.pki.ca_pem().to_string()),
        Duration::from_secs(5),
    ))
    .await
    .unwrap();
    let (_, csr) = new_key_and_csr().unwrap();
    let status = bounded(AgentServiceClient::new(channel).enroll(EnrollRequest {
        token: "cmdb-enroll-nope".into(),
        csr_pem: csr,
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    c.stop().await;
}

#[tokio::test]
async fn a_revoked_agent_is_refused_by_a_running_server() {
    let c = Collector::start().await;
    let token = c
        .tokens
        .create_enrollment(1, HOUR, SystemTime::now())
        .unwrap();
    let enrolled = bounded(cmdb_agent::enroll::enroll(c.options(
        &token,
        CaTrust::File(c.ca_file()),
        &c.dir.path().join("agent"),
    )))
    .await
    .unwrap();
    assert_eq!(connect_and_hello(&c, &enrolled.files).await, Ok(42));

    // `cmdb-collector agent revoke` is another process: another Pki on the same directory.
    let cli = Pki::open(&c.dir.path().join("pki")).unwrap();
    cli.revoke(&enrolled.agent_id).unwrap();
    assert!(cli.is_revoked(&enrolled.agent_id));
    assert!(c.pki.is_revoked(&enrolled.agent_id));
    let refused = connect_and_hello(&c, &enrolled.files).await;
    assert!(
        matches!(&refused, Err(m) if m.starts_with("PermissionDenied")),
        "{refused:?}"
    );
    assert_eq!(c.connected().len(), 1);
    c.stop().await;
}

/// Files under `dir` (bounded depth and count).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = todo.pop() {
        if depth > 4 || out.len() > 1000 {
            break;
        }
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push((p, depth + 1));
            } else {
                out.push(p);
            }
        }
    }
    out
}
