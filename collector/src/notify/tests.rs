//! The outbox against a local HTTP receiver on 127.0.0.1 and the in-memory record store:
//! payload shapes, filters, retries, order, restarts and dead letters. Every wait is bounded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

use super::*;
use crate::store::memory::MemoryRecords;

/// Longest any test waits for something to happen.
const PATIENCE: Duration = Duration::from_secs(10);

// === fixtures ===

fn notice(event: NoticeEvent, number: &str, category: &str, priority: u8) -> IncidentNotice {
    IncidentNotice {
        event,
        number: number.to_owned(),
        title: "web-01 is down".to_owned(),
        category: category.to_owned(),
        priority,
        impact: 1,
        urgency: 1,
        state: "new".to_owned(),
        ci_id: "ci-0123456789abcdef".to_owned(),
        host_id: "host-0123456789abcdef".to_owned(),
        hostname: Some("web-01".to_owned()),
        started_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        resolved_at: None,
        summary: "3 missed heartbeats".to_owned(),
        timeline_len: 2,
    }
}

fn sink(name: &str, url: &str, format: SinkFormat) -> SinkConfig {
    SinkConfig {
        name: name.to_owned(),
        url: url.to_owned(),
        format,
        categories: Vec::new(),
        min_priority: 5,
        authorization: None,
        timeout: Duration::from_secs(2),
    }
}

fn notifier(store: &Arc<MemoryRecords>, sinks: Vec<SinkConfig>) -> Notifier {
    let store: Arc<dyn Store> = Arc::clone(store) as Arc<dyn Store>;
    Notifier::new(store, sinks)
        .unwrap()
        .with_backoff(Duration::from_millis(10), Duration::from_millis(40))
}

/// Queues `notice` as the incident engine would: its ops in one batch, then a wake.
fn enqueue(n: &Notifier, store: &MemoryRecords, notice: &IncidentNotice) -> Vec<String> {
    let ops = n.enqueue_ops(notice, SystemTime::now());
    store.write_records(&ops).unwrap();
    n.wake();
    ops.iter()
        .map(|op| match op {
            RecordOp::Put { id, .. } | RecordOp::Delete { id, .. } => id.clone(),
        })
        .collect()
}

fn outbox(store: &MemoryRecords) -> Vec<(String, OutboxEntry)> {
    store
        .all(OUTBOX)
        .into_iter()
        .map(|(id, v)| (id, serde_json::from_slice(&v).unwrap()))
        .collect()
}

fn dead(store: &MemoryRecords) -> Vec<DeadLetter> {
    store
        .all(DEAD_LETTERS)
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).unwrap())
        .collect()
}

/// Polls `cond` every 10 ms; fails the test after [`PATIENCE`].
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `n` until the returned sender fires (or is dropped).
fn start(
    n: &Arc<Notifier>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(Arc::clone(n).run(async move {
        let _ = rx.await;
    }));
    (tx, task)
}

async fn stop(tx: tokio::sync::oneshot::Sender<()>, task: tokio::task::JoinHandle<()>) {
    let _ = tx.send(());
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the delivery loop stops on shutdown")
        .unwrap();
}

// === the receiver ===

/// One request as the receiver saw it, and what it answered.
#[derive(Clone, Debug)]
struct Received {
    status: u16,
    body: Value,
    idempotency_key: String,
    authorization: Option<String>,
}

/// An HTTP endpoint that answers a scripted status per request, then `then` forever.
struct Receiver {
    script: Mutex<VecDeque<u16>>,
    then: u16,
    got: Mutex<Vec<Received>>,
}

impl Receiver {
    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
    fn accepted(&self) -> Vec<Received> {
        self.got().into_iter().filter(|r| r.status == 200).collect()
    }
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = r.script.lock().unwrap().pop_front().unwrap_or(r.then);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    r.got.lock().unwrap().push(Received {
        status,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        idempotency_key: header("idempotency-key").unwrap_or_default(),
        authorization: header("authorization"),
    });
    StatusCode::from_u16(status).unwrap()
}

async fn serve_on(listener: tokio::net::TcpListener, script: &[u16], then: u16) -> Arc<Receiver> {
    let r = Arc::new(Receiver {
        script: Mutex::new(script.iter().copied().collect()),
        then,
        got: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(Arc::clone(&r));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    r
}

async fn receiver(script: &[u16], then: u16) -> (String, Arc<Receiver>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = serve_on(listener, script, then).await;
    (format!("http://{addr}/hook"), r)
}

/// A loopback address nothing listens on (yet): connections are refused.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn metric(n: &Notifier, name: &str) -> String {
    n.telemetry
        .encode(0)
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

// === payloads ===

#[test]
fn json_payload_is_the_notice_with_its_source() {
    let body = render(
        SinkFormat::Json,
        &notice(NoticeEvent::Opened, "INC0000042", "availability", 1),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"source":"cmdb","event":"opened","number":"INC0000042","title":"web-01 is down","category":"availability","priority":1,"impact":1,"urgency":1,"state":"new","ci_id":"ci-0123456789abcdef","host_id":"host-0123456789abcdef","hostname":"web-01","started_at":"2023-11-14T22:13:20Z","resolved_at":null,"summary":"3 missed heartbeats","timeline_len":2}"#
    );
}

#[test]
fn servicenow_payload_is_an_incident_record() {
    let mut n = notice(NoticeEvent::Opened, "INC0000042", "availability", 3);
    n.impact = 2;
    n.urgency = 2;
    let body: Value = serde_json::from_slice(&render(SinkFormat::Servicenow, &n).unwrap()).unwrap();
    assert_eq!(
        body,
        json!({
            "short_description": "web-01 is down",
            "description": "3 missed heartbeats\n\ncmdb incident INC0000042 (availability, P3, impact 2, urgency 2), state new.\nHost: web-01 (host-0123456789abcdef); CI: ci-0123456789abcdef.\nStarted: 2023-11-14T22:13:20Z. Timeline: 2 events.",
            "impact": "2",
            "urgency": "2",
            "category": "availability",
            "cmdb_ci": "web-01",
            "correlation_id": "INC0000042",
            "correlation_display": "cmdb",
            "state": "1",
        })
    );

    n.event = NoticeEvent::Resolved;
    n.state = "resolved".to_owned();
    n.hostname = None;
    n.resolved_at = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_600));
    let body: Value = serde_json::from_slice(&render(SinkFormat::Servicenow, &n).unwrap()).unwrap();
    assert_eq!(body["state"], "6");
    assert_eq!(body["cmdb_ci"], "host-0123456789abcdef");
    assert_eq!(body["close_code"], SERVICENOW_CLOSE_CODE);
    assert_eq!(
        body["close_notes"],
        "Resolved in cmdb at 2023-11-14T22:23:20Z: 3 missed heartbeats"
    );
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("; resolved: 2023-11-14T22:23:20Z."),
        "{body}"
    );

    // Updates follow the incident's state; closing is 7.
    let state = |event, state: &str| {
        let mut n = n.clone();
        n.event = event;
        n.state = state.to_owned();
        let body: Value =
            serde_json::from_slice(&render(SinkFormat::Servicenow, &n).unwrap()).unwrap();
        body["state"].as_str().unwrap().to_owned()
    };
    assert_eq!(state(NoticeEvent::Updated, "new"), "1");
    assert_eq!(state(NoticeEvent::Updated, "acknowledged"), "2");
    assert_eq!(state(NoticeEvent::Updated, "in progress"), "2");
    assert_eq!(state(NoticeEvent::Updated, "in_progress"), "2");
    assert_eq!(state(NoticeEvent::Closed, "closed"), "7");

    // ServiceNow's short_description holds 160 characters.
    n.title = "é".repeat(400);
    let body: Value = serde_json::from_slice(&render(SinkFormat::Servicenow, &n).unwrap()).unwrap();
    assert_eq!(
        body["short_description"].as_str().unwrap().chars().count(),
        160
    );
}

// === enqueue ===

#[test]
fn filters_pick_the_sinks_and_ids_sort_in_enqueue_order() {
    let store = Arc::new(MemoryRecords::default());
    let mut pager = sink("pager", "http://127.0.0.1:9/x", SinkFormat::Json);
    pager.min_priority = 2;
    let mut security = sink("security", "http://127.0.0.1:9/x", SinkFormat::Servicenow);
    security.categories = vec!["security".into(), "identity".into()];
    let all = sink("all", "http://127.0.0.1:9/x", SinkFormat::Json);
    let n = notifier(&store, vec![pager, security, all]);
    let now = SystemTime::now();

    let sinks_of = |ops: &[RecordOp]| -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                RecordOp::Put { collection, id, .. } => {
                    assert_eq!(*collection, OUTBOX);
                    id.split_once(':').unwrap().0.to_owned()
                }
                RecordOp::Delete { .. } => panic!("enqueue only puts"),
            })
            .collect()
    };
    let p1_availability =
        n.enqueue_ops(&notice(NoticeEvent::Opened, "INC1", "availability", 1), now);
    assert_eq!(sinks_of(&p1_availability), ["pager", "all"]);
    let p2_security = n.enqueue_ops(&notice(NoticeEvent::Opened, "INC2", "security", 2), now);
    assert_eq!(sinks_of(&p2_security), ["pager", "security", "all"]);
    let p3_identity = n.enqueue_ops(&notice(NoticeEvent::Opened, "INC3", "identity", 3), now);
    assert_eq!(sinks_of(&p3_identity), ["security", "all"]);
    let p5_capacity = n.enqueue_ops(&notice(NoticeEvent::Opened, "INC4", "capacity", 5), now);
    assert_eq!(sinks_of(&p5_capacity), ["all"]);

    // Ids of one sink sort in enqueue order; one notice shares one seq across sinks.
    let ids = |ops: &[RecordOp]| -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                RecordOp::Put { id, .. } | RecordOp::Delete { id, .. } => id.clone(),
            })
            .collect()
    };
    let all_ids: Vec<String> = [&p1_availability, &p2_security, &p3_identity, &p5_capacity]
        .iter()
        .map(|ops| {
            ids(ops)
                .into_iter()
                .find(|id| id.starts_with("all:"))
                .unwrap()
        })
        .collect();
    let mut sorted = all_ids.clone();
    sorted.sort();
    assert_eq!(all_ids, sorted);
    let seqs: Vec<String> = ids(&p2_security)
        .iter()
        .map(|id| id.split_once(':').unwrap().1.to_owned())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] == w[1]), "{seqs:?}");
    assert_eq!(seqs[0].len(), 20);

    // The entry is what the worker needs: the notice, nothing attempted yet.
    let RecordOp::Put { value, .. } = &p5_capacity[0] else {
        panic!()
    };
    let entry: OutboxEntry = serde_json::from_slice(value).unwrap();
    assert_eq!(entry.sink, "all");
    assert_eq!(entry.notice.number, "INC4");
    assert_eq!(entry.attempts, 0);
    assert_eq!(entry.next_attempt_at, None);
}

#[test]
fn oversized_strings_are_capped_at_enqueue() {
    let store = Arc::new(MemoryRecords::default());
    let n = notifier(
        &store,
        vec![sink("all", "http://127.0.0.1:9/x", SinkFormat::Json)],
    );
    let mut big = notice(NoticeEvent::Opened, "INC1", "availability", 1);
    big.summary = "ü".repeat(MAX_SUMMARY_BYTES);
    big.title = "t".repeat(MAX_TITLE_BYTES * 3);
    let ops = n.enqueue_ops(&big, SystemTime::now());
    let RecordOp::Put { value, .. } = &ops[0] else {
        panic!()
    };
    let entry: OutboxEntry = serde_json::from_slice(value).unwrap();
    assert!(entry.notice.summary.len() <= MAX_SUMMARY_BYTES);
    assert!(entry.notice.summary.len() >= MAX_SUMMARY_BYTES - 1);
    assert_eq!(entry.notice.title.len(), MAX_TITLE_BYTES);
}

#[test]
fn times_outside_rfc3339_do_not_panic() {
    let store = Arc::new(MemoryRecords::default());
    let n = notifier(
        &store,
        vec![sink("all", "http://127.0.0.1:9/x", SinkFormat::Servicenow)],
    );
    let mut odd = notice(NoticeEvent::Resolved, "INC1", "availability", 1);
    odd.started_at = UNIX_EPOCH - Duration::from_secs(10);
    odd.resolved_at = Some(UNIX_EPOCH + Duration::from_secs(400_000_000_000));
    let ops = n.enqueue_ops(&odd, UNIX_EPOCH - Duration::from_secs(1));
    assert_eq!(ops.len(), 1);
    for format in [SinkFormat::Json, SinkFormat::Servicenow] {
        let body = String::from_utf8(render(format, &odd).unwrap()).unwrap();
        assert!(body.contains("1970-01-01T00:00:00Z"), "{body}");
        assert!(body.contains("9999-12-31T23:59:59Z"), "{body}");
    }
}

#[test]
fn invalid_sinks_are_refused() {
    let store: Arc<dyn Store> = Arc::new(MemoryRecords::default());
    let e = Notifier::new(
        Arc::clone(&store),
        vec![sink("s", "https://example.com/x", SinkFormat::Json)],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("notify.sinks.url") && e.contains("TLS"), "{e}");
    let e = Notifier::new(
        store,
        vec![
            sink("s", "http://a/x", SinkFormat::Json),
            sink("s", "http://b/x", SinkFormat::Json),
        ],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("another sink"), "{e}");
}

// === delivery ===

#[tokio::test]
async fn refused_entries_are_retried_and_delivered_once_in_order() {
    let (url, rx) = receiver(&[500, 500], 200).await;
    let store = Arc::new(MemoryRecords::default());
    let mut hook = sink("hook", &url, SinkFormat::Json);
    hook.authorization = Some("Bearer hook-secret".to_owned());
    let n = Arc::new(notifier(&store, vec![hook]));
    let mut ids = Vec::new();
    for (event, state) in [
        (NoticeEvent::Opened, "new"),
        (NoticeEvent::Updated, "acknowledged"),
        (NoticeEvent::Resolved, "resolved"),
    ] {
        let mut notice = notice(event, "INC0000007", "availability", 2);
        notice.state = state.to_owned();
        ids.extend(enqueue(&n, &store, &notice));
    }
    let (tx, task) = start(&n);

    wait_for("three deliveries", || rx.accepted().len() == 3).await;
    wait_for("an empty outbox", || store.all(OUTBOX).is_empty()).await;
    wait_for("the sent counter", || {
        metric(&n, "cmdb_notify_sent_total") == "3"
    })
    .await;
    stop(tx, task).await;

    let got = rx.got();
    let seen: Vec<(u16, &str, &str)> = got
        .iter()
        .map(|r| {
            (
                r.status,
                r.body["event"].as_str().unwrap(),
                r.idempotency_key.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (500, "opened", ids[0].as_str()),
            (500, "opened", ids[0].as_str()),
            (200, "opened", ids[0].as_str()),
            (200, "updated", ids[1].as_str()),
            (200, "resolved", ids[2].as_str()),
        ]
    );
    assert!(
        got.iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer hook-secret"))
    );
    assert_eq!(got[0].body["source"], "cmdb");
    assert_eq!(metric(&n, "cmdb_notify_failed_attempts_total"), "2");
    assert_eq!(metric(&n, "cmdb_notify_dead_total"), "0");
    assert_eq!(metric(&n, "cmdb_notify_pending"), "0");
}

#[tokio::test]
async fn an_unreachable_sink_is_retried_until_it_listens() {
    let addr = closed_port().await;
    let store = Arc::new(MemoryRecords::default());
    let n = Arc::new(notifier(
        &store,
        vec![sink(
            "hook",
            &format!("http://{addr}/hook"),
            SinkFormat::Json,
        )],
    ));
    let ids = enqueue(
        &n,
        &store,
        &notice(NoticeEvent::Opened, "INC1", "availability", 1),
    );
    let (tx, task) = start(&n);

    // The failures are written back into the entry: attempts, error, next attempt.
    wait_for("two refused attempts", || {
        outbox(&store).first().is_some_and(|(_, e)| e.attempts >= 2)
    })
    .await;
    let (id, entry) = outbox(&store).remove(0);
    assert_eq!(id, ids[0]);
    let error = entry.last_error.unwrap();
    assert!(error.to_lowercase().contains("connect"), "{error}");
    assert!(entry.next_attempt_at.is_some() && entry.last_attempt_at.is_some());

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let rx = serve_on(listener, &[], 200).await;
    wait_for("the delivery", || store.all(OUTBOX).is_empty()).await;
    stop(tx, task).await;
    let got = rx.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body["number"], "INC1");
    assert!(
        metric(&n, "cmdb_notify_failed_attempts_total")
            .parse::<u64>()
            .unwrap()
            >= 2
    );
}

#[tokio::test]
async fn the_pending_gauge_grows_while_the_oldest_entry_keeps_failing() {
    let (url, rx) = receiver(&[], 503).await;
    let store = Arc::new(MemoryRecords::default());
    let n = Arc::new(notifier(&store, vec![sink("hook", &url, SinkFormat::Json)]));
    enqueue(
        &n,
        &store,
        &notice(NoticeEvent::Opened, "INC1", "availability", 1),
    );
    let (tx, task) = start(&n);
    wait_for("a failed attempt", || !rx.got().is_empty()).await;
    wait_for("one pending", || metric(&n, "cmdb_notify_pending") == "1").await;
    // Queued while the worker retries the first entry: the gauge shows the backlog grow.
    for number in ["INC2", "INC3"] {
        enqueue(
            &n,
            &store,
            &notice(NoticeEvent::Opened, number, "availability", 1),
        );
    }
    wait_for("three pending", || metric(&n, "cmdb_notify_pending") == "3").await;
    stop(tx, task).await;
    assert!(rx.accepted().is_empty());
}

#[tokio::test]
async fn a_pending_entry_survives_a_restart() {
    let addr = closed_port().await;
    let url = format!("http://{addr}/hook");
    let store = Arc::new(MemoryRecords::default());

    // First life: the sink is down; the entry is attempted and stays queued.
    let first = Arc::new(notifier(&store, vec![sink("hook", &url, SinkFormat::Json)]));
    let old = enqueue(
        &first,
        &store,
        &notice(NoticeEvent::Opened, "INC1", "availability", 1),
    );
    let (tx, task) = start(&first);
    wait_for("a failed attempt", || {
        outbox(&store).first().is_some_and(|(_, e)| e.attempts >= 1)
    })
    .await;
    stop(tx, task).await;
    drop(first);
    let attempts_before = outbox(&store)[0].1.attempts;

    // Second life, same store: the counter continues after the queued entry, and the old
    // entry goes first.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let rx = serve_on(listener, &[], 200).await;
    let second = Arc::new(notifier(&store, vec![sink("hook", &url, SinkFormat::Json)]));
    let new = enqueue(
        &second,
        &store,
        &notice(NoticeEvent::Opened, "INC2", "availability", 1),
    );
    assert!(new[0] > old[0], "{new:?} sorts after {old:?}");
    assert!(outbox(&store)[0].1.attempts >= attempts_before);
    let (tx, task) = start(&second);
    wait_for("both deliveries", || rx.accepted().len() == 2).await;
    wait_for("an empty outbox", || store.all(OUTBOX).is_empty()).await;
    stop(tx, task).await;
    let numbers: Vec<String> = rx
        .got()
        .iter()
        .map(|r| r.body["number"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(numbers, ["INC1", "INC2"]);
}

#[tokio::test]
async fn an_entry_past_its_max_age_is_dead_lettered_and_other_sinks_carry_on() {
    let (bad_url, bad) = receiver(&[], 503).await;
    let (good_url, good) = receiver(&[], 200).await;
    let store = Arc::new(MemoryRecords::default());
    let n = Arc::new(
        notifier(
            &store,
            vec![
                sink("bad", &bad_url, SinkFormat::Servicenow),
                sink("good", &good_url, SinkFormat::Json),
            ],
        )
        .with_max_attempts_age(Duration::from_millis(50)),
    );
    let ids = enqueue(
        &n,
        &store,
        &notice(NoticeEvent::Opened, "INC9", "security", 1),
    );
    let (tx, task) = start(&n);
    wait_for("the dead letter", || store.all(DEAD_LETTERS).len() == 1).await;
    wait_for("the good delivery", || good.accepted().len() == 1).await;
    wait_for("an empty outbox", || store.all(OUTBOX).is_empty()).await;
    wait_for("the dead counter", || {
        metric(&n, "cmdb_notify_dead_total") == "1"
    })
    .await;
    stop(tx, task).await;

    let letters = dead(&store);
    let letter = &letters[0];
    assert_eq!(letter.id, ids[0]);
    assert_eq!(letter.sink, "bad");
    assert!(
        letter.reason.contains("max_attempts_age"),
        "{}",
        letter.reason
    );
    let entry = letter.entry.as_ref().unwrap();
    assert_eq!(entry.notice.number, "INC9");
    assert!(entry.attempts >= 1);
    assert_eq!(entry.attempts as usize, bad.got().len());
    assert!(
        entry.last_error.as_deref().unwrap().contains("503"),
        "{entry:?}"
    );
    // The ServiceNow sink got incident records.
    assert_eq!(bad.got()[0].body["correlation_id"], "INC9");
}

#[tokio::test]
async fn entries_of_removed_sinks_and_undecodable_entries_are_dead_lettered() {
    let (url, rx) = receiver(&[], 200).await;
    let store = Arc::new(MemoryRecords::default());
    // Queued by an earlier configuration that had a sink "gone".
    let earlier = notifier(
        &store,
        vec![sink("gone", "http://127.0.0.1:9/x", SinkFormat::Json)],
    );
    enqueue(
        &earlier,
        &store,
        &notice(NoticeEvent::Opened, "INC1", "availability", 1),
    );
    drop(earlier);
    store
        .write_records(&[RecordOp::Put {
            collection: OUTBOX,
            id: outbox_id("hook", 1),
            value: b"{not json".to_vec(),
        }])
        .unwrap();

    let n = Arc::new(notifier(&store, vec![sink("hook", &url, SinkFormat::Json)]));
    let later = enqueue(
        &n,
        &store,
        &notice(NoticeEvent::Opened, "INC2", "availability", 1),
    );
    let (tx, task) = start(&n);
    wait_for("the delivery", || rx.accepted().len() == 1).await;
    wait_for("an empty outbox", || store.all(OUTBOX).is_empty()).await;
    stop(tx, task).await;

    assert_eq!(rx.got()[0].body["number"], "INC2");
    assert!(later[0].starts_with("hook:"));
    let mut letters = dead(&store);
    letters.sort_by(|a, b| a.sink.cmp(&b.sink));
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].sink, "gone");
    assert!(letters[0].reason.contains("no longer configured"));
    assert_eq!(letters[0].entry.as_ref().unwrap().notice.number, "INC1");
    assert_eq!(letters[1].sink, "hook");
    assert!(letters[1].reason.contains("cannot be decoded"));
    assert_eq!(letters[1].raw.as_deref(), Some("{not json"));
}

#[test]
fn backoff_has_full_jitter_under_a_doubling_cap() {
    let b = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };
    for attempts in 1..40 {
        let ceiling = Duration::from_secs(1u64 << (attempts - 1).min(20)).min(b.max);
        for _ in 0..20 {
            assert!(b.delay(attempts) <= ceiling);
        }
    }
    // Jitter: not always the ceiling.
    assert!((0..50).any(|_| b.delay(5) < Duration::from_secs(16)));
}
