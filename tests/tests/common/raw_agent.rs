//! A minimal enrolled agent for end-to-end tests that need events the real agent would not
//! send on demand (metric windows with chosen timestamps, hand-made snapshots): it enrolls
//! with a token and a fresh key + CSR (the real agent's [`new_key_and_csr`]), then opens a
//! `Connect` stream over mTLS with the issued certificate and sends whatever events the test
//! builds. Everything is blocking from the test's point of view (an internal runtime) and
//! every network step is bounded by [`STEP`].
//!
//! ```ignore
//! let mut a = RawAgent::enroll(&collector, "web-01");
//! let seq = a.next_seq();
//! a.send(vec![RawAgent::event(seq, at, Kind::Metrics(m))]); // returns once acked
//! ```
//!
//! `send` splits long event lists into batches of [`BATCH`] and waits for the ack of each,
//! so the collector's batch and rate limits are respected for moderate volumes.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use cmdb_agent::enroll::new_key_and_csr;
use cmdb_agent::tls::{self as agent_tls, ServerTrust, TlsFiles};
use cmdb_proto::convert::timestamp_from_system;
use cmdb_proto::v1::agent_service_client::AgentServiceClient;
use cmdb_proto::v1::{self, AgentMessage, agent_message, collector_message, event};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use super::Collector;

/// Bound on every network step (connect, enroll, one batch's ack).
pub const STEP: Duration = Duration::from_secs(20);
/// Events per batch (the collector's default limit is 1000).
pub const BATCH: usize = 200;

pub struct RawAgent {
    pub agent_id: String,
    pub instance_id: String,
    pub identity: v1::HostIdentity,
    /// Holds ca.pem, cert.pem, key.pem.
    pub state_dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<v1::CollectorMessage>,
    /// The last seq acked by the collector.
    pub acked: u64,
    seq: u64,
}

impl RawAgent {
    /// Enrolls a new agent whose host is named `hostname` (its product UUID and machine id
    /// are derived from the name, so one name is one host) and opens its stream.
    pub fn enroll(collector: &Collector, hostname: &str) -> RawAgent {
        let h = stable_hex(hostname);
        let identity = v1::HostIdentity {
            hostname: Some(hostname.to_owned()),
            product_uuid: Some(format!(
                "{}-{}-4{}-8{}-{}",
                &h[0..8],
                &h[8..12],
                &h[13..16],
                &h[17..20],
                &h[20..32]
            )),
            machine_id: Some(h[..32].to_owned()),
            ..Default::default()
        };
        Self::enroll_with(collector, identity)
    }

    /// Enrolls with exactly this identity.
    pub fn enroll_with(collector: &Collector, identity: v1::HostIdentity) -> RawAgent {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let token = collector.token(1, "10m");
        let ca = std::fs::read_to_string(collector.ca_file()).unwrap();
        let url = collector.grpc_url();
        let state_dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(state_dir.path());
        let instance_id = format!("00000000-0000-4000-8000-{}", &stable_hex(&url)[..12]);
        let (agent_id, tx, inbound, acked) = rt.block_on(async {
            let channel =
                agent_tls::connect_for_enrollment(&url, &ServerTrust::CaPem(ca.clone()), STEP)
                    .await
                    .unwrap();
            let (key, csr) = new_key_and_csr().unwrap();
            let resp = tokio::time::timeout(
                STEP,
                AgentServiceClient::new(channel).enroll(v1::EnrollRequest {
                    token,
                    csr_pem: csr,
                    identity: Some(identity.clone()),
                    agent_version: "raw-test".into(),
                    instance_id: instance_id.clone(),
                }),
            )
            .await
            .expect("enroll timed out")
            .expect("enroll refused")
            .into_inner();
            std::fs::write(&files.ca, &ca).unwrap();
            std::fs::write(&files.cert, &resp.certificate_chain_pem).unwrap();
            std::fs::write(&files.key, &key).unwrap();
            let channel = agent_tls::connect(&url, &files, STEP).await.unwrap();
            let (tx, rx) = mpsc::channel::<AgentMessage>(16);
            tx.send(AgentMessage {
                kind: Some(agent_message::Kind::Hello(v1::Hello {
                    identity: Some(identity.clone()),
                    agent_version: "raw-test".into(),
                    instance_id: instance_id.clone(),
                    last_acked_seq: 0,
                    inventory_hash: vec![],
                })),
            })
            .await
            .unwrap();
            let mut inbound = tokio::time::timeout(
                STEP,
                AgentServiceClient::new(channel)
                    .max_encoding_message_size(16 * 1024 * 1024)
                    .connect(ReceiverStream::new(rx)),
            )
            .await
            .expect("connect timed out")
            .expect("connect refused")
            .into_inner();
            let acked = next_ack(&mut inbound).await;
            (resp.agent_id, tx, inbound, acked)
        });
        RawAgent {
            agent_id,
            instance_id,
            identity,
            state_dir,
            rt,
            tx,
            inbound,
            acked,
            seq: acked,
        }
    }

    /// The next sequence number to use (sequences must increase).
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// An event with `seq`, observed at `at`.
    pub fn event(seq: u64, at: SystemTime, kind: event::Kind) -> v1::Event {
        v1::Event {
            seq,
            observed_at: Some(timestamp_from_system(at)),
            kind: Some(kind),
        }
    }

    /// A one-window `Metrics` event body.
    pub fn metrics(
        window_start: SystemTime,
        window_seconds: u32,
        summaries: Vec<v1::MetricSummary>,
    ) -> event::Kind {
        event::Kind::Metrics(v1::Metrics {
            window_start: Some(timestamp_from_system(window_start)),
            window_seconds,
            summaries,
        })
    }

    /// A snapshot of `items`, every class reported `ok` by one collector named "raw".
    pub fn snapshot(&self, items: Vec<v1::Item>) -> event::Kind {
        let mut classes: Vec<String> = items.iter().map(|i| i.class.clone()).collect();
        classes.sort();
        classes.dedup();
        event::Kind::Snapshot(v1::Snapshot {
            inventory: Some(v1::Inventory {
                schema: "cmdb.inventory/v1".into(),
                collected_at: Some(timestamp_from_system(SystemTime::now())),
                agent: Some(v1::AgentInfo {
                    version: "raw-test".into(),
                    instance_id: self.instance_id.clone(),
                }),
                host: Some(self.identity.clone()),
                collectors: vec![v1::CollectorStatus {
                    name: "raw".into(),
                    state: v1::CollectorState::Ok as i32,
                    duration_ms: 1,
                    items: items.len() as u64,
                    message: None,
                    classes,
                }],
                items,
                relations: vec![],
            }),
            content_hash: vec![0; 32],
        })
    }

    /// Sends `events` in batches of [`BATCH`], waiting for each batch's ack; returns the
    /// last acked seq. Panics when the stream ends or an ack does not come within [`STEP`].
    pub fn send(&mut self, events: Vec<v1::Event>) -> u64 {
        let mut events = events;
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(BATCH));
            let batch = std::mem::replace(&mut events, rest);
            let want = batch.iter().map(|e| e.seq).max().unwrap_or(0);
            let (tx, inbound) = (&self.tx, &mut self.inbound);
            let acked = self.rt.block_on(async {
                tx.send(AgentMessage {
                    kind: Some(agent_message::Kind::Batch(v1::Batch { events: batch })),
                })
                .await
                .expect("stream closed");
                let mut acked = 0;
                while acked < want {
                    acked = next_ack(inbound).await;
                }
                acked
            });
            self.acked = acked;
        }
        self.acked
    }
}

/// The next Ack's `up_to_seq`, skipping other collector messages.
async fn next_ack(inbound: &mut Streaming<v1::CollectorMessage>) -> u64 {
    loop {
        let m = tokio::time::timeout(STEP, inbound.message())
            .await
            .expect("no ack in time")
            .expect("stream failed")
            .expect("stream ended");
        if let Some(collector_message::Kind::Ack(a)) = m.kind {
            return a.up_to_seq;
        }
    }
}

/// 64 hex digits derived from `s`: stable, distinct ids for test hosts (not cryptographic).
fn stable_hex(s: &str) -> String {
    use std::fmt::Write;
    // FNV-1a, widened: enough to keep test hosts apart.
    let mut out = String::new();
    for round in 0u64..4 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ round;
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let _ = write!(out, "{h:016x}");
    }
    out
}
