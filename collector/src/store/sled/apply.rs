//! Applying agent events to the store inside one [`Txn`]: CI upserts and removals with their
//! versions, snapshot reconciliation, relations, metrics and the agent's own counters.
//!
//! Rules (the module doc of `store` has the promises): a version is written only when the
//! state or the attributes change; a snapshot removes CIs only of classes whose collector
//! reported `ok`; relations are dropped by a snapshot only when both ends' classes are `ok`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use super::codec::{self, CiRow};
use super::feed_tail::OldAttrs;
use super::keys;
use super::txn::{self, Txn, TxnCi};
use crate::store::{
    AgentRecord, ApplyOutcome, ChangeKind, CiId, CiState, MetricRecord, MetricSummary,
    RelationRecord, ShutdownRecord, StoreError, ci_id,
};
use cmdb_proto::convert::system_from_timestamp;
use cmdb_proto::model::{CollectorReport, CollectorState, Inventory, Relation};
use cmdb_proto::v1;

/// Longest class name accepted (DESIGN.md's are all short).
const MAX_CLASS_LEN: usize = 128;
/// Longest CI key accepted.
const MAX_KEY_LEN: usize = 4096;
/// Upper bound on the CIs of one (host, class) or relations of one host that a snapshot
/// reconciles; far above any real host, it only keeps a hostile agent from unbounded work.
pub(super) const MAX_RECONCILE: usize = 1 << 20;

/// Who observed a change, and when.
pub(super) struct Source<'a> {
    pub(super) agent_id: &'a str,
    pub(super) seq: u64,
    pub(super) observed_at: SystemTime,
}

/// A class the store can index: non-empty, bounded, no NUL (the key separator), and not
/// the reserved host class (host CIs are the collector's, not the agent's).
pub(super) fn valid_class(class: &str) -> bool {
    !class.is_empty()
        && class.len() <= MAX_CLASS_LEN
        && !class.contains('\0')
        && class != crate::store::HOST_CLASS
}

fn bump(row: &mut CiRow, src: &Source<'_>) {
    row.version += 1;
    row.last_seen = src.observed_at;
    row.last_changed = src.observed_at;
    if row.source_agent != src.agent_id {
        row.source_agent = src.agent_id.to_owned();
    }
    row.source_seq = src.seq;
}

/// Makes (host, class, key) present with `attrs` (in `codec::encode_attrs` form: canonical,
/// so equal attributes have equal encodings). `id` is `ci_id(host, class, key)`. Returns
/// whether a version was written.
pub(super) fn upsert_ci(
    txn: &mut Txn<'_>,
    (host, class, key): (&str, &str, &str),
    id: CiId,
    attrs: Vec<u8>,
    src: &Source<'_>,
) -> Result<bool, StoreError> {
    if !txn.load_ci(host, class, &id)? {
        let row = CiRow {
            state: CiState::Present,
            version: 1,
            head: 0,
            first_seen: src.observed_at,
            last_seen: src.observed_at,
            last_changed: src.observed_at,
            source_agent: src.agent_id.to_owned(),
            source_seq: src.seq,
            key: key.to_owned(),
            attrs,
        };
        txn.create_ci(host, class, id, row, src);
        return Ok(true);
    }
    let Some(ci) = txn.cis.get_mut(&id) else {
        return Ok(false);
    };
    let row = &mut ci.row;
    if row.key != key {
        return Err(StoreError::Corrupt {
            key: id,
            reason: format!(
                "CI id collision: stored {host}/{class}/{}, new {host}/{class}/{key}",
                row.key
            ),
        });
    }
    let change = match row.state {
        CiState::Present if row.attrs == attrs => {
            row.last_seen = src.observed_at;
            return Ok(false);
        }
        CiState::Present => ChangeKind::Changed,
        CiState::Absent | CiState::Retired => {
            if row.state == CiState::Absent {
                txn.raw.delete(keys::absent(row.last_changed, &id));
            }
            row.state = CiState::Present;
            ChangeKind::Added
        }
    };
    let old = std::mem::replace(&mut row.attrs, attrs);
    bump(row, src);
    txn.versions.record(ci, change, src, OldAttrs::Encoded(old));
    Ok(true)
}

/// Marks a present CI absent (a Removed version keeping its last attributes). Returns
/// whether a version was written; unknown, absent and retired CIs are left alone.
pub(super) fn remove_ci(
    txn: &mut Txn<'_>,
    host: &str,
    class: &str,
    id: &str,
    src: &Source<'_>,
) -> Result<bool, StoreError> {
    // Peek first: reconciliation visits many long-absent CIs that must not be rewritten.
    if txn.peek_state(host, class, id)? != Some(CiState::Present) {
        return Ok(false);
    }
    txn.load_ci(host, class, id)?;
    let Some(ci) = txn.cis.get_mut(id) else {
        return Ok(false);
    };
    ci.row.state = CiState::Absent;
    bump(&mut ci.row, src);
    txn.raw.put(
        keys::absent(ci.row.last_changed, id),
        keys::ci_location(host, class),
    );
    txn.versions
        .record(ci, ChangeKind::Removed, src, OldAttrs::Same);
    Ok(true)
}

/// Retires an absent CI of (host, class) (a Retired version). Returns whether it did.
pub(super) fn retire_ci(
    txn: &mut Txn<'_>,
    host: &str,
    class: &str,
    id: &str,
    src: &Source<'_>,
) -> Result<bool, StoreError> {
    if txn.peek_state(host, class, id)? != Some(CiState::Absent) {
        return Ok(false);
    }
    txn.load_ci(host, class, id)?;
    let Some(ci) = txn.cis.get_mut(id) else {
        return Ok(false);
    };
    txn.raw.delete(keys::absent(ci.row.last_changed, id));
    ci.row.state = CiState::Retired;
    bump(&mut ci.row, src);
    txn.versions
        .record(ci, ChangeKind::Retired, src, OldAttrs::Same);
    Ok(true)
}

/// `<class>/<key>` → (class, key).
fn split_ref(r: &str) -> Option<(&str, &str)> {
    let (class, key) = r.split_once('/')?;
    valid_ref_class(class).then_some((class, key))
}

fn valid_ref_class(class: &str) -> bool {
    !class.is_empty() && class.len() <= MAX_CLASS_LEN && !class.contains('\0')
}

/// The (from, to, kind) identity of a relation of `host`, or None if malformed.
fn relation_ids(host: &str, r: &Relation) -> Option<(String, String)> {
    let (fc, fk) = split_ref(&r.from)?;
    let (tc, tk) = split_ref(&r.to)?;
    if r.kind.len() > MAX_CLASS_LEN {
        return None;
    }
    Some((ci_id(host, fc, fk), ci_id(host, tc, tk)))
}

/// Sets a relation present or absent. Returns Ok(None) if malformed, else whether it changed.
fn set_relation(
    txn: &mut Txn<'_>,
    host: &str,
    r: &Relation,
    present: bool,
) -> Result<Option<bool>, StoreError> {
    let Some((from, to)) = relation_ids(host, r) else {
        return Ok(None);
    };
    let key = keys::relation(&from, &to, &r.kind);
    let existing: Option<RelationRecord> = txn.get_json(&key)?;
    match &existing {
        Some(e) if e.present == present => return Ok(Some(false)),
        None if !present => return Ok(Some(false)),
        _ => {}
    }
    if existing.is_none() {
        txn.raw
            .put(keys::relation_rev(&from, &to, &r.kind), Vec::new());
        txn.raw
            .put(keys::relation_host(host, &from, &to, &r.kind), Vec::new());
    }
    let rec = RelationRecord {
        from,
        to,
        kind: r.kind.clone(),
        host_id: host.to_owned(),
        present,
        from_ref: r.from.clone(),
        to_ref: r.to.clone(),
    };
    txn.raw.put_json(key, &rec)?;
    Ok(Some(true))
}

fn observed_at(ev: &v1::Event, now: SystemTime, out: &mut ApplyOutcome) -> SystemTime {
    match ev
        .observed_at
        .as_ref()
        .and_then(|t| system_from_timestamp(t, "Event.observed_at").ok())
    {
        Some(t) => t,
        None => {
            out.missing_observed_at += 1;
            now
        }
    }
}

/// Applies `events` of one agent (see `Store::apply`). The agent must be identified.
///
/// `prepared`: what [`Prepared::read`] made of the same `events` before the writer lock was
/// taken, keeping only what is still current ([`Prepared::trusted`]); its ids and rows are
/// used only if it was made for the host the agent still has, else the work is done here.
pub(super) fn apply_events(
    txn: &mut Txn<'_>,
    agent_id: &str,
    events: &[v1::Event],
    now: SystemTime,
    mut prepared: Option<Prepared>,
) -> Result<ApplyOutcome, StoreError> {
    let unidentified = || StoreError::Unidentified {
        agent_id: agent_id.to_owned(),
    };
    if let Some(rec) = prepared.as_mut().and_then(|p| p.agent.take()) {
        txn.seed_agent(rec);
    }
    let mut agent = txn.peek_agent(agent_id)?.ok_or_else(unidentified)?;
    let host = agent.host_id.clone().ok_or_else(unidentified)?;
    let mut deltas = HashMap::new();
    if let Some(p) = prepared.filter(|p| p.host.as_deref() == Some(host.as_str())) {
        txn.seed_rows(p.rows);
        deltas = p.deltas;
    }
    let mut order: Vec<(usize, &v1::Event)> = events.iter().enumerate().collect();
    order.sort_by_key(|(_, e)| e.seq);
    let mut out = ApplyOutcome::default();
    for (at, ev) in order {
        use v1::event::Kind;
        if ev.seq == 0 {
            // Heartbeats are unsequenced; any other event needs a seq.
            if let Some(Kind::Heartbeat(hb)) = &ev.kind {
                agent.outbox_events = hb.outbox_events;
                agent.outbox_bytes = hb.outbox_bytes;
                out.unsequenced += 1;
            } else {
                out.rejected += 1;
            }
            continue;
        }
        if ev.seq <= agent.last_seq {
            out.duplicates += 1;
            continue;
        }
        agent.last_seq = ev.seq;
        let src = Source {
            agent_id,
            seq: ev.seq,
            observed_at: observed_at(ev, now, &mut out),
        };
        match &ev.kind {
            None => {
                out.rejected += 1;
                continue;
            }
            Some(Kind::Snapshot(s)) => apply_snapshot(txn, &host, &mut agent, s, &src, &mut out)?,
            Some(Kind::Delta(d)) => {
                let prepared = deltas.remove(&at);
                apply_delta(txn, &host, &mut agent, (d, prepared), &src, &mut out)?;
            }
            Some(Kind::Metrics(m)) => apply_metrics(txn, &host, m, &src, &mut out)?,
            Some(Kind::Heartbeat(hb)) => {
                agent.outbox_events = hb.outbox_events;
                agent.outbox_bytes = hb.outbox_bytes;
            }
            Some(Kind::Shutdown(s)) => {
                agent.last_shutdown = Some(ShutdownRecord {
                    at: src.observed_at,
                    reason: s.reason.chars().take(1024).collect(),
                    received_at: now,
                });
            }
            Some(Kind::Gap(g)) => {
                agent.gaps = agent.gaps.saturating_add(1);
                agent.dropped_metrics = agent.dropped_metrics.saturating_add(g.dropped_metrics);
                agent.dropped_inventory_changes = agent
                    .dropped_inventory_changes
                    .saturating_add(g.dropped_inventory_changes);
            }
        }
        out.applied += 1;
    }
    agent.last_seen = Some(now);
    out.last_seq = agent.last_seq;
    txn.agents.insert(agent_id.to_owned(), agent);
    Ok(out)
}

/// The ids of the CIs a snapshot or delta names, as (class, key) pairs (`None` for an
/// invalid class or an overlong key), with their stored rows read ahead
/// (`Txn::prefetch_cis`: one pass per class, in key order).
fn ids_read_ahead<'i>(
    txn: &mut Txn<'_>,
    host: &str,
    named: impl Iterator<Item = (&'i str, &'i str)>,
) -> Result<Vec<Option<CiId>>, StoreError> {
    let named: Vec<(&str, &str)> = named.collect();
    let ids = ids_of(host, &named);
    for (class, of_class) in by_class(&named, &ids) {
        txn.prefetch_cis(host, class, &of_class)?;
    }
    Ok(ids)
}

/// `ci_id` of each named (class, key), `None` where the class or key is not acceptable.
fn ids_of(host: &str, named: &[(&str, &str)]) -> Vec<Option<CiId>> {
    named
        .iter()
        .map(|&(class, key)| {
            (valid_class(class) && key.len() <= MAX_KEY_LEN).then(|| ci_id(host, class, key))
        })
        .collect()
}

/// The ids in `ids` (one per entry of `named`) grouped by their class.
fn by_class<'a>(
    named: &[(&'a str, &str)],
    ids: &'a [Option<CiId>],
) -> BTreeMap<&'a str, Vec<&'a str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (&(class, _), id) in named.iter().zip(ids) {
        if let Some(id) = id {
            out.entry(class).or_default().push(id);
        }
    }
    out
}

/// The (class, key) of each change of a delta.
fn named_changes(delta: &v1::Delta) -> Vec<(&str, &str)> {
    delta
        .changes
        .iter()
        .map(|c| (c.class.as_str(), c.key.as_str()))
        .collect()
}

/// The part of applying one agent's events that needs no writer lock, done before it is
/// taken (`SledStore::apply`), so that the writer holds the lock for less and, in the
/// common case, reads nothing from the tree (`pipeline`: it can then build while the
/// previous batch is applied): the agent's record, and each delta's CI ids, encoded
/// attributes and the stored rows of those CIs.
///
/// The records are read without the lock, so a transaction can write some of them after
/// they are read; `as_of` (the store's commit number when the read began: every commit up
/// to it is in what was read) lets the writer keep only those that no transaction built
/// since wrote ([`Prepared::trusted`]). Ids and attributes depend only on the events and the
/// host, so they are kept whenever the agent's host is still `host`.
pub(super) struct Prepared {
    /// The agent's host, from its record as read.
    host: Option<String>,
    /// The agent's record as read (without pending heartbeats).
    agent: Option<AgentRecord>,
    /// By position of the delta event in the call's events.
    deltas: HashMap<usize, PreparedDelta>,
    rows: HashMap<CiId, Option<TxnCi>>,
}

/// One delta's ids and encoded new attributes (added and changed CIs), by change.
struct PreparedDelta {
    ids: Vec<Option<CiId>>,
    attrs: Vec<Option<Vec<u8>>>,
}

impl Prepared {
    /// Prepares `events` of `agent_id`. The caller reads the store's commit number before
    /// (the writer checks against it; see [`Prepared::trusted`]).
    pub(super) fn read(
        tree: &sled::Tree,
        agent_id: &str,
        events: &[v1::Event],
    ) -> Result<Option<Prepared>, StoreError> {
        let agent = txn::read_agent(tree, agent_id)?;
        let host = agent.as_ref().and_then(|a| a.host_id.clone());
        let mut deltas = HashMap::new();
        let mut rows = HashMap::new();
        let Some(h) = host.as_deref() else {
            return Ok(Some(Prepared {
                host,
                agent,
                deltas,
                rows,
            }));
        };
        for (at, ev) in events.iter().enumerate() {
            let Some(v1::event::Kind::Delta(d)) = &ev.kind else {
                continue;
            };
            let named = named_changes(d);
            let ids = ids_of(h, &named);
            for (class, of_class) in by_class(&named, &ids) {
                let wanted: Vec<&str> = of_class
                    .into_iter()
                    .filter(|id| !rows.contains_key(*id))
                    .collect();
                rows.extend(txn::read_rows(tree, h, class, &wanted)?);
            }
            let attrs = d
                .changes
                .iter()
                .zip(&ids)
                .map(|(c, id)| {
                    let upsert = matches!(
                        v1::ChangeKind::try_from(c.kind),
                        Ok(v1::ChangeKind::Added | v1::ChangeKind::Changed)
                    );
                    (upsert && id.is_some()).then(|| codec::encode_proto_attrs(&c.new_attrs))
                })
                .collect();
            deltas.insert(at, PreparedDelta { ids, attrs });
        }
        Ok(Some(Prepared {
            host,
            agent,
            deltas,
            rows,
        }))
    }

    /// Keeps the rows only if `rows_current(host)` (no transaction built since the read
    /// wrote a CI of the host) and the agent's record only if `agent_current`; the writer
    /// reads what is dropped again (under the lock, after the transaction in flight).
    pub(super) fn trusted(
        mut self,
        rows_current: impl FnOnce(&str) -> bool,
        agent_current: bool,
    ) -> Self {
        if !self.host.as_deref().is_some_and(rows_current) {
            self.rows.clear();
        }
        if !agent_current {
            self.agent = None;
        }
        self
    }
}

fn apply_snapshot(
    txn: &mut Txn<'_>,
    host: &str,
    agent: &mut AgentRecord,
    snapshot: &v1::Snapshot,
    src: &Source<'_>,
    out: &mut ApplyOutcome,
) -> Result<(), StoreError> {
    let Some(inv) = snapshot
        .inventory
        .as_ref()
        .and_then(|i| Inventory::try_from(i).ok())
    else {
        out.rejected += 1;
        return Ok(());
    };
    // Only classes an ok collector is authoritative for may lose CIs.
    let ok_classes: BTreeSet<&str> = inv
        .collectors
        .iter()
        .filter(|c| c.status == CollectorState::Ok)
        .flat_map(|c| c.classes.iter().map(String::as_str))
        .collect();
    let ids = ids_read_ahead(
        txn,
        host,
        inv.items.iter().map(|i| (i.class.as_str(), i.key.as_str())),
    )?;
    let mut seen: HashSet<String> = HashSet::with_capacity(inv.items.len());
    for (item, id) in inv.items.into_iter().zip(ids) {
        let Some(id) = id.filter(|_| txn.class_allowed(&item.class)) else {
            out.rejected += 1;
            continue;
        };
        seen.insert(id.clone());
        let attrs = codec::encode_attrs(&item.attrs);
        if upsert_ci(txn, (host, &item.class, &item.key), id, attrs, src)? {
            out.ci_versions += 1;
        }
    }
    for class in &ok_classes {
        if !valid_class(class) {
            continue;
        }
        for id in txn.ci_ids_of(host, class, MAX_RECONCILE)? {
            if !seen.contains(&id) && remove_ci(txn, host, class, &id, src)? {
                out.ci_versions += 1;
            }
        }
    }
    // Relations: present ones upserted, stored ones missing from the snapshot dropped when
    // both of their ends belong to ok classes.
    let mut seen_rel: HashSet<(String, String, String)> = HashSet::new();
    for r in &inv.relations {
        match set_relation(txn, host, r, true)? {
            None => out.rejected += 1,
            Some(_) => {
                if let Some((from, to)) = relation_ids(host, r) {
                    seen_rel.insert((from, to, r.kind.clone()));
                }
            }
        }
    }
    let prefix = keys::relation_host_prefix(host);
    for k in txn.keys_with_prefix(&prefix, MAX_RECONCILE)? {
        let Some((from, to, kind)) = keys::after_prefix(&k, &prefix).and_then(keys::relation_parts)
        else {
            continue;
        };
        if seen_rel.contains(&(from.clone(), to.clone(), kind.clone())) {
            continue;
        }
        let rkey = keys::relation(&from, &to, &kind);
        let Some(rec) = txn.get_json::<RelationRecord>(&rkey)? else {
            continue;
        };
        let ends_ok = [&rec.from_ref, &rec.to_ref]
            .iter()
            .all(|r| split_ref(r).is_some_and(|(class, _)| ok_classes.contains(class)));
        if rec.present && ends_ok {
            let relation = Relation {
                from: rec.from_ref.clone(),
                to: rec.to_ref.clone(),
                kind: rec.kind.clone(),
            };
            set_relation(txn, host, &relation, false)?;
        }
    }
    agent.collectors = inv.collectors;
    agent.inventory_hash = hex::encode(&snapshot.content_hash);
    Ok(())
}

fn apply_delta(
    txn: &mut Txn<'_>,
    host: &str,
    agent: &mut AgentRecord,
    (delta, prepared): (&v1::Delta, Option<PreparedDelta>),
    src: &Source<'_>,
    out: &mut ApplyOutcome,
) -> Result<(), StoreError> {
    let named = named_changes(delta);
    let (ids, mut attrs) = match prepared {
        Some(p) if p.ids.len() == named.len() => (p.ids, p.attrs),
        _ => (ids_of(host, &named), Vec::new()),
    };
    // Rows already read ahead (Prepared) are not read again.
    for (class, of_class) in by_class(&named, &ids) {
        txn.prefetch_cis(host, class, &of_class)?;
    }
    for (i, (change, id)) in delta.changes.iter().zip(ids).enumerate() {
        let Some(id) = id else {
            out.rejected += 1;
            continue;
        };
        let written = match v1::ChangeKind::try_from(change.kind) {
            Ok(v1::ChangeKind::Added | v1::ChangeKind::Changed)
                if !txn.class_allowed(&change.class) =>
            {
                out.rejected += 1;
                false
            }
            Ok(v1::ChangeKind::Added | v1::ChangeKind::Changed) => {
                let attrs = attrs
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_else(|| codec::encode_proto_attrs(&change.new_attrs));
                upsert_ci(txn, (host, &change.class, &change.key), id, attrs, src)?
            }
            Ok(v1::ChangeKind::Removed) => remove_ci(txn, host, &change.class, &id, src)?,
            Ok(v1::ChangeKind::Unspecified) | Err(_) => {
                out.rejected += 1;
                false
            }
        };
        if written {
            out.ci_versions += 1;
        }
    }
    for (relations, present) in [
        (&delta.relations_added, true),
        (&delta.relations_removed, false),
    ] {
        for r in relations {
            if set_relation(txn, host, &Relation::from(r), present)?.is_none() {
                out.rejected += 1;
            }
        }
    }
    if !delta.collectors.is_empty() {
        match delta
            .collectors
            .iter()
            .map(CollectorReport::try_from)
            .collect::<Result<Vec<_>, _>>()
        {
            // A delta reports only the collectors that ran (a partial refresh, a re-hashed
            // file): merge by name, keep the others' last statuses.
            Ok(c) => {
                for report in c {
                    match agent.collectors.iter_mut().find(|r| r.name == report.name) {
                        Some(slot) => *slot = report,
                        None => agent.collectors.push(report),
                    }
                }
            }
            Err(_) => out.rejected += 1,
        }
    }
    if !delta.content_hash.is_empty() {
        agent.inventory_hash = hex::encode(&delta.content_hash);
    }
    Ok(())
}

fn apply_metrics(
    txn: &mut Txn<'_>,
    host: &str,
    m: &v1::Metrics,
    src: &Source<'_>,
    out: &mut ApplyOutcome,
) -> Result<(), StoreError> {
    let window_start = m
        .window_start
        .as_ref()
        .and_then(|t| system_from_timestamp(t, "Metrics.window_start").ok())
        .unwrap_or(src.observed_at);
    let mut summaries = Vec::with_capacity(m.summaries.len());
    for s in &m.summaries {
        // JSON cannot carry NaN or infinities; such a summary is useless to capacity anyway.
        if ![s.min, s.avg, s.max, s.p95].iter().all(|x| x.is_finite()) {
            out.rejected += 1;
            continue;
        }
        summaries.push(MetricSummary {
            name: s.name.clone(),
            labels: s.labels.clone(),
            min: s.min,
            avg: s.avg,
            max: s.max,
            p95: s.p95,
            samples: s.samples,
        });
    }
    let rec = MetricRecord {
        host_id: host.to_owned(),
        window_start,
        window_seconds: m.window_seconds,
        summaries,
    };
    txn.raw.put_json(keys::metric(host, window_start), &rec)?;
    txn.raw
        .put(keys::metric_time(window_start, host), Vec::new());
    Ok(())
}
