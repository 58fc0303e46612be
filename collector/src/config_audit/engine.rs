//! The audit computation: the register against the live CIs, in memory, independent of
//! the store (the service feeds it the store's bulk scan; the bench feeds it generated CIs).
//!
//! [`Index::new`] indexes the [`Register`] by (host, class, key) — all three numbers (the
//! audited host's, the register's interned class and key): each audited host gets one
//! contiguous run of (class, key, row) entries sorted by class and key (a counting sort by
//! host, then each host's run sorted, on [`SHARDS`] threads). CIs arrive grouped by host,
//! so a lookup is a binary search in a run already in cache — a hash map over all rows
//! cost two cache misses per CI, which was nearly all of the observation's time. An
//! [`Observer`] takes CIs of the audited classes in any order: the key's number (one
//! lookup in the register's texts), one index lookup, then a comparison of the row's
//! expected attributes. Several observers may run at once on disjoint sets of CIs (the
//! service and the bench use one per part of the hosts); [`Index::finish`] merges them and
//! turns the rows never seen into `missing` deficiencies.
//!
//! The outcome does not depend on the order CIs arrive in nor on how they are split: a
//! row whose hostname names several hosts (the only row more than one CI can match) takes
//! the qualifying CI with the smallest id, and deficiencies that tie on (kind, class, host,
//! key, attribute) are ordered by CI id — as a scan in id order would give them.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use cmdb_proto::model::AttrValue;
use serde::{Deserialize, Serialize};

use super::fxhash::FxMap;
use super::register::{Register, RegisterRow, Sym};
use crate::store::{CiState, CiView, HOST_CLASS};

/// Kinds of deficiency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Missing,
    Unregistered,
    Mismatched,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Unregistered => "unregistered",
            Kind::Mismatched => "mismatched",
        }
    }
}

/// A deficiency as the computation finds it (the service adds id and state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub class: String,
    pub key: String,
    /// As the register names it (missing, mismatched), or the host's name (unregistered).
    pub host: String,
    pub host_id: Option<String>,
    pub ci_id: Option<String>,
    pub attribute: Option<String>,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

/// Per-class counts of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    pub class: String,
    pub registered: u64,
    /// Registered, found live, every expected attribute matching.
    pub healthy: u64,
    pub unregistered: u64,
}

/// Totals of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Register rows.
    pub registered: u64,
    /// Live CIs in scope (audited class on an audited host): matched plus unregistered.
    pub live: u64,
    /// Registered CIs not seen live.
    pub missing: u64,
    /// Live CIs in scope with no register row.
    pub unregistered: u64,
    /// Registered CIs found live with at least one expected attribute differing.
    pub mismatched: u64,
}

/// The outcome of one computation.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub summary: Summary,
    pub classes: Vec<ClassCount>,
    /// Sorted by (kind, class, host, key, attribute).
    pub found: Vec<Found>,
}

/// Hosts known to the CMDB: host id → hostname.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    names: HashMap<String, String>,
    by_name: HashMap<String, Vec<String>>,
}

impl Hosts {
    pub fn add(&mut self, host_id: &str, hostname: Option<&str>) {
        let name = hostname.unwrap_or("");
        if let Some(old) = self.names.get(host_id)
            && (!old.is_empty() || name.is_empty())
        {
            return;
        }
        self.names.insert(host_id.to_owned(), name.to_owned());
        if !name.is_empty() {
            let ids = self.by_name.entry(name.to_ascii_lowercase()).or_default();
            if !ids.iter().any(|i| i == host_id) {
                ids.push(host_id.to_owned());
            }
        }
    }

    /// The host ids a register `host` names: itself when it is a known host id, else every
    /// host with that hostname (case-insensitive).
    pub fn resolve(&self, host: &str) -> Vec<&str> {
        if let Some((id, _)) = self.names.get_key_value(host) {
            return vec![id.as_str()];
        }
        self.by_name
            .get(&host.to_ascii_lowercase())
            .map(|ids| ids.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    pub fn name(&self, host_id: &str) -> Option<&str> {
        self.names
            .get(host_id)
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }
}

/// Whether `actual` is what `expected` says. A string expectation (as CSV gives) matches
/// the value's text form; numbers compare numerically; booleans exactly.
pub fn matches(expected: &serde_json::Value, actual: Option<&AttrValue>) -> bool {
    use serde_json::Value as J;
    let Some(actual) = actual else {
        return false;
    };
    match (expected, actual) {
        (J::String(e), AttrValue::Str(a)) => e == a,
        (J::String(e), AttrValue::Int(i)) => e.trim().parse::<i64>().is_ok_and(|n| n == *i),
        (J::String(e), AttrValue::Float(f)) => e.trim().parse::<f64>().is_ok_and(|n| n == *f),
        (J::String(e), AttrValue::Bool(b)) => e.trim().eq_ignore_ascii_case(bool_text(*b)),
        (J::String(e), AttrValue::List(_)) => *e == text(actual),
        (J::Number(n), AttrValue::Int(i)) => {
            n.as_i64() == Some(*i) || n.as_f64().is_some_and(|f| f == *i as f64)
        }
        (J::Number(n), AttrValue::Float(f)) => n.as_f64() == Some(*f),
        (J::Number(n), AttrValue::Str(s)) => s.trim() == n.to_string(),
        (J::Bool(b), AttrValue::Bool(a)) => a == b,
        (J::Bool(b), AttrValue::Str(s)) => s.trim().eq_ignore_ascii_case(bool_text(*b)),
        _ => false,
    }
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// An attribute value as text (strings bare, the rest as JSON).
pub fn text(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => s.clone(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Float(f) => f.to_string(),
        AttrValue::Bool(b) => bool_text(*b).to_owned(),
        AttrValue::Null => "null".to_owned(),
        AttrValue::List(_) => serde_json::to_string(v).unwrap_or_default(),
    }
}

/// An expected value as text.
pub fn expected_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

const UNSEEN: u8 = 0;
const HEALTHY: u8 = 1;
const MISMATCHED: u8 = 2;

/// Threads that build the index, and parts of the hosts the service observes in parallel:
/// this machine's cores.
pub const SHARDS: usize = 2;

/// An index entry's flag: the row's host names several hosts (see the module doc).
const CONTESTED: u32 = 1 << 31;

/// One index entry of a host: (class, key) → row (| [`CONTESTED`]).
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    class: Sym,
    key: Sym,
    row: u32,
}

/// The register indexed for one run (see the module doc). Immutable once built.
pub struct Index<'r> {
    reg: &'r Register,
    hosts: &'r Hosts,
    cutoff: SystemTime,
    /// Audited class (register text number) → dense class number, in register order.
    classes: FxMap<Sym, u32>,
    class_syms: Vec<Sym>,
    /// Audited host id → number.
    host_ids: FxMap<&'r str, u32>,
    /// Host number `h`'s entries are `entries[host_start[h]..host_start[h + 1]]`, sorted
    /// by (class, key, row).
    host_start: Vec<usize>,
    entries: Vec<Entry>,
    /// Rows whose (host, class, key) an earlier row already holds (one host named by
    /// hostname and by id): (first, other), in (other, host) order; the other shares the
    /// first's outcome.
    aliases: Vec<(u32, u32)>,
    host_class: Option<u32>,
}

impl<'r> Index<'r> {
    /// `cutoff`: an absent CI last seen at or after it still counts as seen live.
    pub fn new(reg: &'r Register, hosts: &'r Hosts, cutoff: SystemTime) -> Self {
        let mut classes: FxMap<Sym, u32> = FxMap::default();
        let mut class_syms = Vec::new();
        let mut host_ids: FxMap<&'r str, u32> = FxMap::default();
        // Each distinct register host resolved once: its audited host numbers.
        let mut resolved: FxMap<Sym, Vec<u32>> = FxMap::default();
        for i in 0..reg.len() {
            let (c, h, _) = reg.syms_of(i);
            if let std::collections::hash_map::Entry::Vacant(e) = classes.entry(c) {
                e.insert(class_syms.len() as u32);
                class_syms.push(c);
            }
            resolved.entry(h).or_insert_with(|| {
                hosts
                    .resolve(reg.text(h))
                    .into_iter()
                    .map(|id| {
                        let n = host_ids.len() as u32;
                        *host_ids.entry(id).or_insert(n)
                    })
                    .collect()
            });
        }
        let (host_start, entries, aliases) = build(reg, &resolved, host_ids.len());
        let host_class = reg.sym(HOST_CLASS).and_then(|c| classes.get(&c).copied());
        Index {
            reg,
            hosts,
            cutoff,
            classes,
            class_syms,
            host_ids,
            host_start,
            entries,
            aliases,
            host_class,
        }
    }

    /// The entry of (host, class, key): the first row holding it.
    fn lookup(&self, h: u32, class: Sym, key: Sym) -> Option<u32> {
        let from = *self.host_start.get(h as usize)?;
        let to = *self.host_start.get(h as usize + 1)?;
        let run = self.entries.get(from..to)?;
        let at = run.partition_point(|e| (e.class, e.key) < (class, key));
        run.get(at)
            .filter(|e| (e.class, e.key) == (class, key))
            .map(|e| e.row)
    }

    /// The audited classes (those of the register), in register order.
    pub fn classes(&self) -> Vec<String> {
        self.class_syms
            .iter()
            .map(|&c| self.reg.text(c).to_owned())
            .collect()
    }

    /// A fresh observer of this index.
    pub fn observer(&self) -> Observer<'_, 'r> {
        Observer {
            index: self,
            seen: vec![UNSEEN; self.reg.len()],
            contested: FxMap::default(),
            last_host: (String::new(), None),
            last_class: (String::new(), None),
            unregistered: vec![0; self.class_syms.len()],
            live: 0,
            found: Vec::new(),
        }
    }

    /// Merges the observers (each CI seen by at most one of them) into the outcome.
    pub fn finish(&self, observers: Vec<Observer<'_, 'r>>) -> Outcome {
        let reg = self.reg;
        let mut seen = vec![UNSEEN; reg.len()];
        let mut live = 0;
        let mut unregistered = vec![0u64; self.class_syms.len()];
        let mut found = Vec::new();
        let mut contested: FxMap<u32, Candidate> = FxMap::default();
        for o in observers {
            for (s, v) in seen.iter_mut().zip(&o.seen) {
                if *s == UNSEEN {
                    *s = *v;
                }
            }
            live += o.live;
            for (u, v) in unregistered.iter_mut().zip(&o.unregistered) {
                *u += v;
            }
            found.extend(o.found);
            for (row, c) in o.contested {
                match contested.entry(row) {
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        if c.ci_id < e.get().ci_id {
                            e.insert(c);
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(c);
                    }
                }
            }
        }
        for (row, c) in contested {
            if let Some(s) = seen.get_mut(row as usize) {
                *s = c.state;
            }
            live += u64::from(c.present);
            found.extend(c.found);
        }
        for &(first, other) in &self.aliases {
            let s = seen[first as usize];
            let o = &mut seen[other as usize];
            if *o == UNSEEN {
                *o = s;
            }
        }
        let mut classes: Vec<ClassCount> = self
            .class_syms
            .iter()
            .enumerate()
            .map(|(i, &c)| ClassCount {
                class: reg.text(c).to_owned(),
                registered: 0,
                healthy: 0,
                unregistered: unregistered[i],
            })
            .collect();
        let mut s = Summary {
            registered: reg.len() as u64,
            live,
            ..Summary::default()
        };
        let mut last_class = (Sym::MAX, 0usize);
        for (i, state) in seen.iter().enumerate() {
            let (class_sym, host_sym, _) = reg.syms_of(i);
            if class_sym != last_class.0 {
                last_class = (
                    class_sym,
                    self.classes.get(&class_sym).copied().unwrap_or(0) as usize,
                );
            }
            let c = &mut classes[last_class.1];
            c.registered += 1;
            match *state {
                HEALTHY => c.healthy += 1,
                MISMATCHED => s.mismatched += 1,
                _ => {
                    s.missing += 1;
                    let host = reg.text(host_sym);
                    let ids = self.hosts.resolve(host);
                    found.push(Found {
                        kind: Kind::Missing,
                        class: reg.text(class_sym).to_owned(),
                        key: reg.key(i).to_owned(),
                        host: host.to_owned(),
                        host_id: (ids.len() == 1).then(|| ids[0].to_owned()),
                        ci_id: None,
                        attribute: None,
                        expected: None,
                        actual: None,
                    });
                }
            }
        }
        s.unregistered = unregistered.iter().sum();
        classes.sort_by(|a, b| a.class.cmp(&b.class));
        found.sort_by(|a, b| {
            (a.kind, &a.class, &a.host, &a.key, &a.attribute, &a.ci_id).cmp(&(
                b.kind,
                &b.class,
                &b.host,
                &b.key,
                &b.attribute,
                &b.ci_id,
            ))
        });
        Outcome {
            summary: s,
            classes,
            found,
        }
    }
}

/// The host runs of the index (see the module doc) and the aliases, in the order one pass
/// over the rows finds them: (other, host position in the other's resolution, first).
#[allow(clippy::type_complexity)]
fn build(
    reg: &Register,
    resolved: &FxMap<Sym, Vec<u32>>,
    hosts: usize,
) -> (Vec<usize>, Vec<Entry>, Vec<(u32, u32)>) {
    let hosts_of = |h: Sym| resolved.get(&h).map_or(&[][..], Vec::as_slice);
    // Counting sort by host: count, then place, in row order.
    let mut start = vec![0usize; hosts + 1];
    let mut last: (Sym, &[u32]) = (Sym::MAX, &[]);
    for i in 0..reg.len() {
        let h = reg.syms_of(i).1;
        if h != last.0 {
            last = (h, hosts_of(h));
        }
        for &n in last.1 {
            start[n as usize + 1] += 1;
        }
    }
    for h in 0..hosts {
        start[h + 1] += start[h];
    }
    let mut entries = vec![Entry::default(); start[hosts]];
    let mut fill = start.clone();
    let mut last: (Sym, &[u32]) = (Sym::MAX, &[]);
    for i in 0..reg.len() {
        let (class, h, key) = reg.syms_of(i);
        if h != last.0 {
            last = (h, hosts_of(h));
        }
        let flag = if last.1.len() > 1 { CONTESTED } else { 0 };
        for &n in last.1 {
            let at = &mut fill[n as usize];
            entries[*at] = Entry {
                class,
                key,
                row: i as u32 | flag,
            };
            *at += 1;
        }
    }
    // Each host's run sorted (a stable sort: equal (class, key) stay in row order), the
    // hosts split between the threads at a host boundary.
    let sort_runs = |runs: &mut [Entry], bounds: &[usize]| {
        let base = bounds.first().copied().unwrap_or(0);
        for w in bounds.windows(2) {
            runs[w[0] - base..w[1] - base].sort_by_key(|e| (e.class, e.key));
        }
    };
    let mid_host = hosts / 2;
    let (a, b) = entries.split_at_mut(start[mid_host]);
    std::thread::scope(|s| {
        s.spawn(|| sort_runs(a, &start[..=mid_host]));
        sort_runs(b, &start[mid_host..]);
    });
    // Equal (class, key) in one host's run: the first row holds, the others are aliases.
    let mut aliases = Vec::new();
    for (h, w) in start.windows(2).enumerate() {
        let run = &entries[w[0]..w[1]];
        for pair in run.windows(2) {
            if (pair[0].class, pair[0].key) != (pair[1].class, pair[1].key) {
                continue;
            }
            let first_of_run =
                run.partition_point(|e| (e.class, e.key) < (pair[1].class, pair[1].key));
            let first = run[first_of_run].row & !CONTESTED;
            let other = pair[1].row & !CONTESTED;
            if other != first {
                let pos = hosts_of(reg.syms_of(other as usize).1)
                    .iter()
                    .position(|&n| n as usize == h)
                    .unwrap_or(0);
                aliases.push((other, pos, first));
            }
        }
    }
    aliases.sort_unstable();
    let aliases = aliases
        .into_iter()
        .map(|(other, _, first)| (first, other))
        .collect();
    (start, entries, aliases)
}

/// What a contested row's qualifying CI made of it (the smallest CI id wins).
struct Candidate {
    ci_id: String,
    present: bool,
    state: u8,
    found: Vec<Found>,
}

/// Takes CIs for one [`Index`] (see the module doc).
pub struct Observer<'i, 'r> {
    index: &'i Index<'r>,
    seen: Vec<u8>,
    contested: FxMap<u32, Candidate>,
    /// The last CI's host id and class, resolved (CIs come grouped by class and host).
    last_host: (String, Option<u32>),
    last_class: (String, Option<(Sym, u32)>),
    unregistered: Vec<u64>,
    live: u64,
    found: Vec<Found>,
}

impl Observer<'_, '_> {
    /// Takes one CI (any state; CIs of classes outside the register are ignored).
    pub fn observe(&mut self, ci: &CiView<'_>) {
        let index = self.index;
        let reg = index.reg;
        if self.last_class.0 != ci.class || self.last_class.0.is_empty() {
            let c = reg
                .sym(ci.class)
                .and_then(|s| index.classes.get(&s).map(|&n| (s, n)));
            self.last_class = (ci.class.to_owned(), c);
        }
        let Some((class_sym, c)) = self.last_class.1 else {
            return;
        };
        let present = ci.state == CiState::Present;
        if self.last_host.0 != ci.host_id || self.last_host.0.is_empty() {
            self.last_host = (
                ci.host_id.to_owned(),
                index.host_ids.get(ci.host_id).copied(),
            );
        }
        let h = self.last_host.1;
        if let Some(h) = h
            && let Some(key_sym) = reg.sym(ci.key)
            && let Some(v) = index.lookup(h, class_sym, key_sym)
        {
            if !(present || ci.last_seen >= index.cutoff) {
                return;
            }
            let row = v & !CONTESTED;
            if v & CONTESTED != 0 {
                let mut found = Vec::new();
                let state = compare(reg, row as usize, ci, &mut found);
                let better = self
                    .contested
                    .get(&row)
                    .is_none_or(|c| ci.id < c.ci_id.as_str());
                if better {
                    self.contested.insert(
                        row,
                        Candidate {
                            ci_id: ci.id.to_owned(),
                            present,
                            state,
                            found,
                        },
                    );
                }
                return;
            }
            let Some(slot) = self.seen.get_mut(row as usize) else {
                return;
            };
            if *slot != UNSEEN {
                return;
            }
            if present {
                self.live += 1;
            }
            *slot = compare(reg, row as usize, ci, &mut self.found);
            return;
        }
        // Unregistered: present, of an audited class, on an audited host (every host for
        // class `host`).
        if present && (h.is_some() || Some(c) == index.host_class) {
            self.live += 1;
            self.unregistered[c as usize] += 1;
            self.found.push(Found {
                kind: Kind::Unregistered,
                class: ci.class.to_owned(),
                key: ci.key.to_owned(),
                host: index
                    .hosts
                    .name(ci.host_id)
                    .unwrap_or(ci.host_id)
                    .to_owned(),
                host_id: Some(ci.host_id.to_owned()),
                ci_id: Some(ci.id.to_owned()),
                attribute: None,
                expected: None,
                actual: None,
            });
        }
    }
}

/// Compares row `row`'s expected attributes with `ci`'s; pushes a mismatch per attribute
/// that differs and returns the row's state.
fn compare(reg: &Register, row: usize, ci: &CiView<'_>, found: &mut Vec<Found>) -> u8 {
    let mut ok = true;
    for (name, expected) in reg.attributes(row) {
        // The common case, a string equal to the expected one, without decoding a copy
        // (`matches` says the same of it).
        if let serde_json::Value::String(e) = expected
            && ci.attr_str(name).is_some_and(|a| a == e)
        {
            continue;
        }
        let actual = ci.attr(name);
        if !matches(expected, actual.as_deref()) {
            ok = false;
            found.push(Found {
                kind: Kind::Mismatched,
                class: reg.class(row).to_owned(),
                key: reg.key(row).to_owned(),
                host: reg.host(row).to_owned(),
                host_id: Some(ci.host_id.to_owned()),
                ci_id: Some(ci.id.to_owned()),
                attribute: Some(name.to_owned()),
                expected: Some(expected_text(expected)),
                actual: actual.as_deref().map(text),
            });
        }
    }
    if ok { HEALTHY } else { MISMATCHED }
}

/// Register counts by class (for reports).
pub fn classes_of(rows: &[RegisterRow]) -> BTreeMap<&str, u64> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(r.class.as_str()).or_default() += 1;
    }
    m
}
