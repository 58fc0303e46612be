//! The audit log on real files (a temp dir) with its anchor in the in-memory record store:
//! append / reopen, every tamper kind named by seq and line, torn tails, anchor crashes, and
//! a proptest that any single-line edit is reported at its seq.

use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::store::memory::MemoryRecords;

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        actor: "alice".to_owned(),
        role: "change-manager".to_owned(),
        action: "change.approve".to_owned(),
        object: format!("CHG{i:07}"),
        why: i
            .is_multiple_of(2)
            .then(|| format!("window {i} agreed with the app owner")),
        details: json!({ "i": i, "scope": { "host": "web-*", "class": "package" } }),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<MemoryRecords>,
    log: AuditLog,
}

impl Fixture {
    fn new(entries: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryRecords::default());
        let log = AuditLog::open(dir.path(), Arc::clone(&store) as Arc<dyn Store>).unwrap();
        for i in 1..=entries {
            log.append_at(
                event(i),
                UNIX_EPOCH + Duration::from_secs(1_780_000_000 + i as u64),
            )
            .unwrap();
        }
        Self { dir, store, log }
    }

    fn reopen(self) -> Self {
        let Fixture { dir, store, log } = self;
        drop(log);
        let log = AuditLog::open(dir.path(), Arc::clone(&store) as Arc<dyn Store>).unwrap();
        Self { dir, store, log }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(AUDIT_DIR).join(AUDIT_FILE)
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.path())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(&self, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(self.path(), text).unwrap();
    }

    fn anchor(&self) -> Anchor {
        read_anchor(self.store.as_ref()).unwrap().unwrap()
    }

    /// Verifies the whole file as it is now (not only up to the writer's head).
    fn verify_file(&self) -> AuditVerifyReport {
        verify_file(&self.path(), Some(&self.anchor()), None).unwrap()
    }
}

/// The problems as their one-line form, e.g. "edited: seq 4 (line 4): hash mismatch".
fn described(report: &AuditVerifyReport) -> Vec<String> {
    report.problems.iter().map(ToString::to_string).collect()
}

fn first(report: &AuditVerifyReport) -> (AuditProblemKind, Option<u64>, usize) {
    let p = report.problems.first().expect("a problem");
    (p.kind, p.seq, p.line)
}

/// The entry `v` rendered as the log writes lines; with its own `hash` field unless
/// `recompute` (what an attacker who knows the format would do).
fn render(v: &Value, recompute: bool) -> String {
    let raw: RawEntry = serde_json::from_value(v.clone()).unwrap();
    let canonical = raw.fields().canonical();
    let hash = if recompute {
        sha256_hex(canonical.as_bytes())
    } else {
        raw.hash.clone()
    };
    line_of(&canonical, &hash).trim_end_matches('\n').to_owned()
}

/// `line` with `field` set to `value`, edited in place (the hash left as it was).
fn edit(line: &str, field: &str, value: Value) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    v[field] = value;
    render(&v, false)
}

/// `line` with its hash recomputed.
fn rehash(line: &str) -> String {
    render(&serde_json::from_str(line).unwrap(), true)
}

// === appending ===

#[test]
fn entries_chain_and_survive_a_reopen() {
    let f = Fixture::new(3);
    let entries = f.log.entries(None, 100).unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(entries[0].prev_hash, GENESIS_HASH);
    assert_eq!(entries[1].prev_hash, entries[0].hash);
    assert_eq!(entries[2].prev_hash, entries[1].hash);
    assert_eq!(
        f.anchor(),
        Anchor {
            seq: 3,
            hash: entries[2].hash.clone()
        }
    );

    let f = f.reopen();
    assert_eq!(f.log.head(), (3, entries[2].hash.clone()));
    let fourth = f.log.append(event(4)).unwrap();
    assert_eq!(fourth.seq, 4);
    assert_eq!(fourth.prev_hash, entries[2].hash);
    assert_eq!(f.anchor().seq, 4);
    let report = f.log.verify().unwrap();
    assert!(report.ok, "{:?}", described(&report));
    assert_eq!(
        (report.entries, report.head_seq, report.anchor_seq),
        (4, 4, Some(4))
    );

    // Pages for the API.
    let page = f.log.entries(Some(2), 10).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    let page = f.log.entries(None, 2).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(page[1], entries[1]);
}

#[test]
fn a_second_writer_is_refused() {
    let f = Fixture::new(1);
    let again = AuditLog::open(f.dir.path(), Arc::clone(&f.store) as Arc<dyn Store>);
    assert!(matches!(again, Err(AuditError::Locked { .. })));
    // Readers need no lock.
    assert!(f.verify_file().ok);
}

#[test]
fn a_line_is_the_canonical_form_plus_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryRecords::default());
    let log = AuditLog::open(dir.path(), store).unwrap();
    let at = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
    let entry = log
        .append_at(
            AuditEvent {
                actor: "alice".into(),
                role: "change-manager".into(),
                action: "change.approve".into(),
                object: "CHG0000012".into(),
                why: None,
                // Keys out of order at every depth, and a string that needs escaping.
                details: json!({"z": 1, "a": {"y": [true, null], "b": "tab\there \"q\""}}),
            },
            at,
        )
        .unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    let canonical = concat!(
        r#"{"seq":1,"at":"2026-05-28T20:26:40.123Z","actor":"alice","role":"change-manager","#,
        r#""action":"change.approve","object":"CHG0000012","why":null,"#,
        r#""details":{"a":{"b":"tab\there \"q\"","y":[true,null]},"z":1},"#,
        r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000"}"#
    );
    let hash = hex::encode(Sha256::digest(canonical.as_bytes()));
    assert_eq!(entry.hash, hash);
    assert_eq!(
        text,
        format!(
            "{},\"hash\":\"{hash}\"}}\n",
            &canonical[..canonical.len() - 1]
        )
    );
    assert_eq!(entry.at, at);
}

#[test]
fn bad_events_are_refused_and_nothing_is_written() {
    let f = Fixture::new(1);
    let mut e = event(2);
    e.actor.clear();
    assert!(matches!(
        f.log.append(e),
        Err(AuditError::Invalid { field: "actor" })
    ));
    let mut e = event(2);
    e.details = json!({ "blob": "x".repeat(MAX_ENTRY_BYTES) });
    assert!(matches!(f.log.append(e), Err(AuditError::TooLarge { .. })));
    assert!(matches!(
        f.log
            .append_at(event(2), UNIX_EPOCH - Duration::from_secs(1)),
        Err(AuditError::Invalid { field: "at" })
    ));
    assert!(matches!(
        f.log
            .append_at(event(2), UNIX_EPOCH + Duration::from_secs(400_000_000_000)),
        Err(AuditError::Invalid { field: "at" })
    ));
    assert_eq!(f.lines().len(), 1);
    assert!(f.log.verify().unwrap().ok);
}

// === tampering ===

#[test]
fn an_edited_entry_is_named() {
    let f = Fixture::new(6);
    let mut lines = f.lines();
    lines[3] = lines[3].replace("\"alice\"", "\"mallory\"");
    f.write_lines(&lines);
    let report = f.verify_file();
    assert!(!report.ok);
    assert_eq!(
        described(&report),
        ["edited: seq 4 (line 4): hash mismatch"]
    );
    assert_eq!(first(&report), (AuditProblemKind::Edited, Some(4), 4));
}

#[test]
fn an_entry_rewritten_with_a_fresh_hash_is_named() {
    let f = Fixture::new(6);
    let mut lines = f.lines();
    lines[2] = rehash(&edit(&lines[2], "object", json!("CHG9999999")));
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(first(&report), (AuditProblemKind::Edited, Some(3), 3));
    assert_eq!(report.problems.len(), 1, "{:?}", described(&report));
    assert!(report.problems[0].message.contains("rewritten"));

    // The last entry has no successor: the anchor gives it away.
    let f = Fixture::new(6);
    let mut lines = f.lines();
    lines[5] = rehash(&edit(&lines[5], "actor", json!("mallory")));
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(first(&report), (AuditProblemKind::Edited, Some(6), 6));
    assert!(report.problems[0].message.contains("anchor"));
}

#[test]
fn a_removed_entry_is_named() {
    let f = Fixture::new(6);
    let mut lines = f.lines();
    lines.remove(3);
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(
        described(&report),
        ["removed: seq 4 missing between 3 and 5"]
    );
    assert_eq!(first(&report), (AuditProblemKind::Removed, Some(4), 4));

    let f = Fixture::new(6);
    let mut lines = f.lines();
    lines.drain(1..4);
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(
        described(&report),
        ["removed: seq 2..4 missing between 1 and 5"]
    );

    let f = Fixture::new(3);
    let mut lines = f.lines();
    lines.remove(0);
    f.write_lines(&lines);
    assert_eq!(
        described(&f.verify_file()),
        ["removed: seq 1 missing before seq 2"]
    );
}

#[test]
fn swapped_entries_are_named() {
    let f = Fixture::new(6);
    let mut lines = f.lines();
    lines.swap(2, 3);
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(
        described(&report),
        ["inserted: seq 4 (line 3) is out of order: expected seq 3"]
    );

    let f = Fixture::new(7);
    let mut lines = f.lines();
    lines.swap(1, 4);
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(
        described(&report),
        [
            "inserted: seq 5 (line 2) is out of order: expected seq 2",
            "inserted: seq 2 (line 5) is out of order: it belongs between seq 1 and 3",
        ]
    );
}

#[test]
fn forged_and_duplicated_entries_are_named() {
    // A forged seq 3 with a valid hash and link, put before the real one.
    let f = Fixture::new(5);
    let mut lines = f.lines();
    let forged = rehash(&edit(&lines[2], "object", json!("CHG6666666")));
    lines.insert(2, forged);
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(report.problems.len(), 1, "{:?}", described(&report));
    assert_eq!(first(&report), (AuditProblemKind::Inserted, Some(3), 3));
    assert!(report.problems[0].message.contains("not part of the chain"));

    // A copied line.
    let f = Fixture::new(5);
    let mut lines = f.lines();
    lines.insert(2, lines[1].clone());
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(
        described(&report),
        ["inserted: seq 2 (line 3) is a copy of line 2"]
    );
}

#[test]
fn a_cut_off_tail_is_named() {
    let f = Fixture::new(6);
    let lines = f.lines();
    f.write_lines(&lines[..4]);
    let report = f.verify_file();
    assert_eq!(
        described(&report),
        [
            "truncated: the log ends at seq 4 (line 4) but the store's anchor records seq 6: seq 5..6 were cut off"
        ]
    );
    assert_eq!(first(&report), (AuditProblemKind::Truncated, Some(5), 5));

    // Cut in the middle of the last line.
    let f = Fixture::new(3);
    let text = std::fs::read_to_string(f.path()).unwrap();
    std::fs::write(f.path(), &text[..text.len() - 40]).unwrap();
    let report = f.verify_file();
    assert_eq!(first(&report), (AuditProblemKind::Truncated, None, 3));
    assert!(report.problems[0].message.contains("no line end"));
}

#[test]
fn garbage_lines_are_named() {
    let f = Fixture::new(5);
    let mut lines = f.lines();
    lines.insert(2, "this is not an audit entry".to_owned());
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(report.problems.len(), 1, "{:?}", described(&report));
    assert_eq!(first(&report), (AuditProblemKind::Malformed, None, 3));

    // A line overwritten with garbage stands for its entry.
    let f = Fixture::new(5);
    let mut lines = f.lines();
    lines[2] = "\u{0}\u{0}\u{0}garbage".to_owned();
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(report.problems.len(), 1, "{:?}", described(&report));
    assert_eq!(first(&report), (AuditProblemKind::Malformed, Some(3), 3));

    // An extra field is not an entry either.
    let f = Fixture::new(3);
    let mut lines = f.lines();
    lines[1] = lines[1].replacen("\"why\":", "\"approved_by\":\"mallory\",\"why\":", 1);
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(first(&report), (AuditProblemKind::Malformed, Some(2), 2));
}

#[test]
fn an_overlong_line_is_malformed_and_skipped() {
    let f = Fixture::new(2);
    let mut lines = f.lines();
    lines.insert(1, "x".repeat(MAX_LINE_BYTES + 10));
    f.write_lines(&lines);
    let report = f.verify_file();
    assert_eq!(described(&report).len(), 1, "{:?}", described(&report));
    assert_eq!(first(&report), (AuditProblemKind::Malformed, None, 2));
    assert_eq!(report.head_seq, 2);
}

// === crashes and the anchor ===

#[test]
fn a_torn_last_line_is_cut_off_at_open() {
    let f = Fixture::new(3);
    let before = std::fs::read(f.path()).unwrap();
    let mut torn = before.clone();
    torn.extend_from_slice(br#"{"seq":4,"at":"2026-05-28T20:2"#);
    std::fs::write(f.path(), &torn).unwrap();

    let f = f.reopen();
    assert_eq!(std::fs::read(f.path()).unwrap(), before);
    assert_eq!(f.log.head().0, 3);
    let fourth = f.log.append(event(4)).unwrap();
    assert_eq!(fourth.seq, 4);
    let report = f.log.verify().unwrap();
    assert!(report.ok, "{:?}", described(&report));
}

#[test]
fn a_crash_between_append_and_anchor_is_re_anchored() {
    let f = Fixture::new(3);
    let entries = f.log.entries(None, 10).unwrap();
    f.store
        .write_records(&[RecordOp::Put {
            collection: ANCHOR_COLLECTION,
            id: ANCHOR_ID.to_owned(),
            value: serde_json::to_vec(&Anchor {
                seq: 2,
                hash: entries[1].hash.clone(),
            })
            .unwrap(),
        }])
        .unwrap();
    let f = f.reopen();
    assert_eq!(f.anchor().seq, 3);
    assert_eq!(f.lines().len(), 3, "no entry about it: nothing was wrong");
    assert!(f.log.verify().unwrap().ok);
}

#[test]
fn a_tail_cut_while_stopped_is_recorded_in_the_chain() {
    let f = Fixture::new(5);
    let lines = f.lines();
    f.write_lines(&lines[..3]);
    let f = f.reopen();
    let (seq, _) = f.log.head();
    assert_eq!(seq, 4);
    let recorded = f.log.entries(Some(3), 1).unwrap().remove(0);
    assert_eq!(recorded.action, ANCHOR_MISMATCH_ACTION);
    assert_eq!(recorded.actor, SYSTEM_ACTOR);
    assert_eq!(recorded.details["anchor_seq"], 5);
    assert_eq!(recorded.details["log_seq"], 3);

    // Carrying on does not erase the evidence.
    f.log.append(event(6)).unwrap();
    let report = f.log.verify().unwrap();
    assert!(!report.ok);
    assert_eq!(first(&report), (AuditProblemKind::Truncated, Some(4), 4));
    assert!(
        report.problems[0].message.contains("cut off"),
        "{:?}",
        described(&report)
    );
}

#[test]
fn a_failed_anchor_write_shows_until_the_next_append() {
    let f = Fixture::new(2);
    f.store.fail_writes.store(true, Ordering::SeqCst);
    f.log.append(event(3)).unwrap();
    let report = f.log.verify().unwrap();
    assert_eq!(first(&report), (AuditProblemKind::Inserted, Some(3), 3));
    assert!(report.problems[0].message.contains("anchor"));

    f.store.fail_writes.store(false, Ordering::SeqCst);
    f.log.append(event(4)).unwrap();
    let report = f.log.verify().unwrap();
    assert!(report.ok, "{:?}", described(&report));
}

#[test]
fn a_lost_anchor_is_reported_then_re_established() {
    let f = Fixture::new(2);
    let report = verify_file(&f.path(), None, None).unwrap();
    assert_eq!(first(&report), (AuditProblemKind::Unanchored, None, 2));

    // A fresh store (restored from elsewhere): the log anchors itself again.
    let Fixture { dir, log, .. } = f;
    drop(log);
    let store = Arc::new(MemoryRecords::default());
    let log = AuditLog::open(dir.path(), Arc::clone(&store) as Arc<dyn Store>).unwrap();
    assert_eq!(read_anchor(store.as_ref()).unwrap().unwrap().seq, 2);
    assert!(log.verify().unwrap().ok);
}

// === proptest ===

/// A log of random entries written directly (no fsync), and its anchor.
fn chain(events: &[AuditEvent]) -> (Vec<String>, Anchor) {
    let mut prev = GENESIS_HASH.to_owned();
    let mut lines = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let at = humantime::format_rfc3339_millis(
            UNIX_EPOCH + Duration::from_millis(1_780_000_000_000 + i as u64 * 1_017),
        )
        .to_string();
        let fields = Fields {
            seq: i as u64 + 1,
            at: &at,
            actor: &e.actor,
            role: &e.role,
            action: &e.action,
            object: &e.object,
            why: e.why.as_deref(),
            details: &e.details,
            prev_hash: &prev,
        };
        let canonical = fields.canonical();
        let hash = sha256_hex(canonical.as_bytes());
        let line = line_of(&canonical, &hash);
        lines.push(line.trim_end_matches('\n').to_owned());
        prev = hash;
    }
    let anchor = Anchor {
        seq: events.len() as u64,
        hash: prev,
    };
    (lines, anchor)
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn details() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn events() -> impl Strategy<Value = Vec<AuditEvent>> {
    proptest::collection::vec(
        (
            "[a-z]{1,8}",
            "(viewer|operator|change-manager|auditor|admin)",
            "[a-z]{1,6}\\.[a-z]{1,6}",
            ".{0,16}",
            proptest::option::of(".{0,20}"),
            details(),
        )
            .prop_map(|(actor, role, action, object, why, details)| AuditEvent {
                actor,
                role,
                action,
                object,
                why,
                details,
            }),
        1..20,
    )
}

const FIELDS: [&str; 10] = [
    "seq",
    "at",
    "actor",
    "role",
    "action",
    "object",
    "why",
    "details",
    "prev_hash",
    "hash",
];

/// Line `k` with `field` changed to something else.
fn tamper(line: &str, field: &str, token: &str, bump: u64) -> String {
    let v: Value = serde_json::from_str(line).unwrap();
    let new = match field {
        "seq" => json!(v["seq"].as_u64().unwrap() + 1 + bump),
        "at" => json!(format!("2031-01-01T00:00:00.{:03}Z", bump % 1000)),
        "why" if v["why"].is_null() => json!(token),
        "why" => Value::Null,
        "details" => json!({ "edited": token }),
        "prev_hash" | "hash" => json!(sha256_hex(format!("{token}{bump}").as_bytes())),
        other => json!(format!("{}~{token}", v[other].as_str().unwrap())),
    };
    edit(line, field, new)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn an_untouched_log_verifies(events in events()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (lines, anchor) = chain(&events);
        std::fs::write(&path, format!("{}\n", lines.join("\n"))).unwrap();
        let report = verify_file(&path, Some(&anchor), None).unwrap();
        prop_assert!(report.ok, "{:?}", described(&report));
        prop_assert_eq!(report.head_seq, events.len() as u64);
    }

    #[test]
    fn any_single_line_edit_is_reported_at_its_seq(
        events in events(),
        pick in any::<prop::sample::Index>(),
        field in 0..FIELDS.len(),
        recompute in any::<bool>(),
        token in "[a-z0-9]{1,8}",
        bump in 0u64..1000,
    ) {
        let field = FIELDS[field];
        // Recomputing the hash of an edited hash would undo the edit.
        let recompute = recompute && field != "hash";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (mut lines, anchor) = chain(&events);
        let k = pick.index(lines.len());
        let mut edited = tamper(&lines[k], field, &token, bump);
        if recompute {
            edited = rehash(&edited);
        }
        lines[k] = edited;
        std::fs::write(&path, format!("{}\n", lines.join("\n"))).unwrap();
        let report = verify_file(&path, Some(&anchor), None).unwrap();
        prop_assert!(!report.ok);
        let (_, seq, line) = first(&report);
        prop_assert_eq!(
            (seq, line),
            (Some(k as u64 + 1), k + 1),
            "{} edited (recompute {}): {:?}", field, recompute, described(&report)
        );
    }
}
