#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::incidents::{AlertKind, Category, IncidentState};
use crate::store::RecordOp;
use crate::store::memory::MemoryRecords;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn alert(n: usize) -> AlertRecord {
    AlertRecord {
        dedup: format!("h1\0package\0p{n}\0drift"),
        kind: AlertKind::Drift,
        host_id: "ci-host".into(),
        ci_id: format!("ci-{n:016x}"),
        class: "package".into(),
        key: format!("p{n}"),
        summary: format!("package p{n} changed"),
        first_at: at(n as u64),
        last_at: at(n as u64),
        firing: true,
        suppressed: false,
        count: 1,
        drift_ids: vec![format!("DR{n:07}")],
        drift_ids_overflow: 0,
    }
}

fn incident(number: &str) -> Incident {
    let mut inc = Incident {
        number: number.into(),
        title: "unauthorized changes on h1".into(),
        category: Category::UnauthorizedChange,
        ci_id: "ci-host".into(),
        host_id: "ci-host".into(),
        hostname: Some("h1".into()),
        impact: 2,
        urgency: 2,
        priority: 3,
        state: IncidentState::New,
        started_at: at(0),
        updated_at: at(0),
        resolved_at: None,
        closed_at: None,
        assignee: None,
        flapping: false,
        alerts: vec![alert(0)],
        alerts_overflow: 0,
        timeline: Vec::new(),
        timeline_overflow: 0,
        resolution: None,
    };
    inc.log(at(0), "collector", "opened", "first alert");
    inc
}

/// What a store read gives back for `number`.
fn read(store: &MemoryRecords, number: &str) -> Incident {
    let bytes = store.record(C_INCIDENT, number).unwrap().unwrap();
    complete(store, decode(C_INCIDENT, number, &bytes).unwrap()).unwrap()
}

fn count(store: &MemoryRecords, collection: &str, number: &str) -> usize {
    let prefix = format!("{number}/");
    store
        .all(collection)
        .iter()
        .filter(|(id, _)| id.starts_with(&prefix))
        .count()
}

/// Writes `inc` over what `shape` says is stored; returns the ops and the new shape.
fn step(
    store: &MemoryRecords,
    inc: &mut Incident,
    shape: Option<&Shape>,
) -> (Vec<RecordOp>, Shape) {
    let mut batch = Batch::default();
    let after = write(&mut batch, inc, shape);
    store.write_records(&batch.ops).unwrap();
    (batch.ops, after)
}

#[derive(Clone, Debug)]
enum Op {
    /// A new alert joins.
    Add,
    /// The alert at (this modulo the count) fires again.
    Refire(usize),
    /// This many timeline lines.
    Log(usize),
    /// The step commits.
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Add),
        3 => any::<usize>().prop_map(Op::Refire),
        2 => (1usize..400).prop_map(Op::Log),
        2 => Just(Op::Commit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// After any sequence of alert, refire and timeline changes, committed at random
    /// points, reading each incident back gives exactly the incident in memory, the store
    /// holds one record per alert and per timeline entry and nothing else, and the shape
    /// kept is the one a fresh load would compute. Two incidents whose numbers share a
    /// prefix interleave, so a read that strays into the neighbour's records fails.
    #[test]
    fn what_is_read_back_is_what_was_written(
        ops in proptest::collection::vec((any::<bool>(), op()), 1..40)
    ) {
        let store = MemoryRecords::default();
        let mut incs = [incident("INC0000001"), incident("INC00000010")];
        let mut shapes: [Option<Shape>; 2] = [None, None];
        let mut clock = 1;
        for (which, op) in ops.into_iter().chain([(false, Op::Commit), (true, Op::Commit)]) {
            let i = usize::from(which);
            let inc = &mut incs[i];
            clock += 1;
            match op {
                Op::Add => {
                    let n = inc.alerts.len();
                    inc.alerts.push(alert(n));
                }
                Op::Refire(k) => {
                    let n = inc.alerts.len();
                    let a = &mut inc.alerts[k % n];
                    a.count += 1;
                    a.last_at = at(clock);
                    a.drift_ids.push(format!("DR{clock:07}"));
                }
                Op::Log(lines) => {
                    for l in 0..lines {
                        inc.log(at(clock), "collector", "fired", format!("line {clock}.{l}"));
                    }
                }
                Op::Commit => {
                    let (_, shape) = step(&store, inc, shapes[i].as_ref());
                    prop_assert_eq!(&shape, &Shape::of(inc));
                    shapes[i] = Some(shape);
                    let back = read(&store, &inc.number);
                    prop_assert_eq!(&back, &*inc);
                    prop_assert_eq!(count(&store, C_ALERT, &inc.number), inc.alerts.len());
                    prop_assert_eq!(count(&store, C_LOG, &inc.number), inc.timeline.len());
                }
            }
        }
        prop_assert!(incs[0].timeline.len() <= MAX_TIMELINE);
    }
}

/// A step that refires one alert of many writes the header and that alert only; one that
/// adds a timeline line to a full timeline writes the line and drops the oldest after the
/// first.
#[test]
fn a_step_writes_only_what_changed() {
    let store = MemoryRecords::default();
    let mut inc = incident("INC0000001");
    for n in 1..800 {
        inc.alerts.push(alert(n));
    }
    for l in 0..(MAX_TIMELINE + 5) {
        inc.log(at(1), "collector", "fired", format!("line {l}"));
    }
    let (ops, shape) = step(&store, &mut inc, None);
    assert_eq!(ops.len(), 1 + 800 + MAX_TIMELINE);

    inc.alerts[417].count += 1;
    inc.log(at(2), "collector", "fired", "one more");
    let (ops, _) = step(&store, &mut inc, Some(&shape));
    let names: Vec<(&str, &str, bool)> = ops
        .iter()
        .map(|op| (op.collection(), op.id(), matches!(op, RecordOp::Put { .. })))
        .collect();
    let dropped = log_id("INC0000001", 1 + 5 + 1);
    let added = log_id("INC0000001", MAX_TIMELINE as u64 - 1 + 6 + 1);
    assert_eq!(
        names,
        vec![
            (C_INCIDENT, "INC0000001", true),
            (C_ALERT, "INC0000001/00417", true),
            (C_LOG, dropped.as_str(), false),
            (C_LOG, added.as_str(), true),
        ]
    );
    assert_eq!(read(&store, "INC0000001"), inc);
}

/// An incident stored whole (the layout before this one) reads as it was; its next write
/// moves it to this layout, after which the header holds no lists.
#[test]
fn an_incident_stored_whole_reads_and_moves() {
    let store = MemoryRecords::default();
    let mut inc = incident("INC0000003");
    inc.alerts.push(alert(1));
    inc.log(at(1), "collector", "fired", "again");
    store
        .write_records(&[RecordOp::Put {
            collection: C_INCIDENT,
            id: inc.number.clone(),
            value: serde_json::to_vec(&inc).unwrap(),
        }])
        .unwrap();
    assert_eq!(read(&store, "INC0000003"), inc);

    let mut loaded = read(&store, "INC0000003");
    loaded.alerts[1].count = 7;
    step(&store, &mut loaded, None);
    let header: Incident =
        serde_json::from_slice(&store.record(C_INCIDENT, "INC0000003").unwrap().unwrap()).unwrap();
    assert!(!is_inline(&header));
    assert_eq!(read(&store, "INC0000003"), loaded);
    assert_eq!(count(&store, C_ALERT, "INC0000003"), 2);
    assert_eq!(count(&store, C_LOG, "INC0000003"), 2);
}
