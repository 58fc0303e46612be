//! The audit computation as it was before the compact register and the parallel, order-free
//! observers: one observer fed CI records in id order. The tests hold the engine to it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::SystemTime;

use crate::config_audit::engine::{
    ClassCount, Found, Hosts, Kind, Outcome, Summary, expected_text, matches, text,
};
use crate::config_audit::register::RegisterRow;
use crate::store::{CiRecord, CiState, HOST_CLASS};

const UNSEEN: u8 = 0;
const HEALTHY: u8 = 1;
const MISMATCHED: u8 = 2;

/// One audit computation (see the module doc).
pub struct Auditor<'r> {
    rows: &'r [RegisterRow],
    hosts: &'r Hosts,
    classes: HashMap<&'r str, u32>,
    class_names: Vec<&'r str>,
    /// Each row's class number.
    row_class: Vec<u32>,
    /// Audited host id → number.
    host_ids: HashMap<&'r str, u32>,
    index: HashMap<(u32, u32, &'r str), u32>,
    /// The last CI's host id and class, resolved (CIs come grouped by class and often
    /// by host).
    last_host: (String, Option<u32>),
    last_class: (String, Option<u32>),
    /// Rows whose (host, class, key) an earlier row already holds (one host named by
    /// hostname and by id): (first, other); the other shares the first's outcome.
    aliases: Vec<(u32, u32)>,
    seen: Vec<u8>,
    /// CI ids seen for rows (for the compliance failures of mismatched rows).
    cutoff: SystemTime,
    host_class: Option<u32>,
    unregistered: Vec<u64>,
    live: u64,
    found: Vec<Found>,
}

impl<'r> Auditor<'r> {
    /// `cutoff`: an absent CI last seen at or after it still counts as seen live.
    pub fn new(rows: &'r [RegisterRow], hosts: &'r Hosts, cutoff: SystemTime) -> Self {
        let mut classes: HashMap<&'r str, u32> = HashMap::new();
        let mut class_names = Vec::new();
        let mut row_class = Vec::with_capacity(rows.len());
        let mut host_ids: HashMap<&'r str, u32> = HashMap::new();
        // Resolution per distinct register host, once.
        let mut resolved: HashMap<&'r str, Vec<u32>> = HashMap::new();
        let mut index: HashMap<(u32, u32, &'r str), u32> = HashMap::with_capacity(rows.len());
        let mut aliases = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let next = class_names.len() as u32;
            let c = *classes.entry(r.class.as_str()).or_insert_with(|| {
                class_names.push(r.class.as_str());
                next
            });
            row_class.push(c);
            let hs = resolved.entry(r.host.as_str()).or_insert_with(|| {
                hosts
                    .resolve(&r.host)
                    .into_iter()
                    .map(|id| {
                        let n = host_ids.len() as u32;
                        *host_ids.entry(id).or_insert(n)
                    })
                    .collect()
            });
            for &h in hs.iter() {
                match index.entry((h, c, r.key.as_str())) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        if *first.get() != i as u32 {
                            aliases.push((*first.get(), i as u32));
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(i as u32);
                    }
                }
            }
        }
        let host_class = classes.get(HOST_CLASS).copied();
        let n = class_names.len();
        Auditor {
            rows,
            hosts,
            classes,
            class_names,
            row_class,
            host_ids,
            index,
            last_host: (String::new(), None),
            last_class: (String::new(), None),
            aliases,
            seen: vec![UNSEEN; rows.len()],
            cutoff,
            host_class,
            unregistered: vec![0; n],
            live: 0,
            found: Vec::new(),
        }
    }

    /// The audited classes (those of the register).
    pub fn classes(&self) -> Vec<String> {
        self.class_names.iter().map(|c| (*c).to_owned()).collect()
    }

    /// Takes one CI (any state; CIs of classes outside the register are ignored).
    pub fn observe(&mut self, ci: &CiRecord) {
        if self.last_class.0 != ci.class || self.last_class.0.is_empty() {
            self.last_class = (
                ci.class.clone(),
                self.classes.get(ci.class.as_str()).copied(),
            );
        }
        let Some(c) = self.last_class.1 else {
            return;
        };
        let present = ci.state == CiState::Present;
        if self.last_host.0 != ci.host_id || self.last_host.0.is_empty() {
            self.last_host = (
                ci.host_id.clone(),
                self.host_ids.get(ci.host_id.as_str()).copied(),
            );
        }
        let h = self.last_host.1;
        if let Some(h) = h
            && let Some(&row) = self.index.get(&(h, c, ci.key.as_str()))
        {
            if !(present || ci.last_seen >= self.cutoff) {
                return;
            }
            let slot = &mut self.seen[row as usize];
            if *slot != UNSEEN {
                // Seen through another host of an ambiguous hostname: the first counts.
                return;
            }
            if present {
                self.live += 1;
            }
            let r = &self.rows[row as usize];
            let mut ok = true;
            for (name, expected) in &r.attributes {
                let actual = ci.attrs.get(name);
                if !matches(expected, actual) {
                    ok = false;
                    self.found.push(Found {
                        kind: Kind::Mismatched,
                        class: r.class.clone(),
                        key: r.key.clone(),
                        host: r.host.clone(),
                        host_id: Some(ci.host_id.clone()),
                        ci_id: Some(ci.id.clone()),
                        attribute: Some(name.clone()),
                        expected: Some(expected_text(expected)),
                        actual: actual.map(text),
                    });
                }
            }
            *slot = if ok { HEALTHY } else { MISMATCHED };
            return;
        }
        // Unregistered: present, of an audited class, on an audited host (every host for
        // class `host`).
        if present && (h.is_some() || Some(c) == self.host_class) {
            self.live += 1;
            self.unregistered[c as usize] += 1;
            self.found.push(Found {
                kind: Kind::Unregistered,
                class: ci.class.clone(),
                key: ci.key.clone(),
                host: self
                    .hosts
                    .name(&ci.host_id)
                    .unwrap_or(&ci.host_id)
                    .to_owned(),
                host_id: Some(ci.host_id.clone()),
                ci_id: Some(ci.id.clone()),
                attribute: None,
                expected: None,
                actual: None,
            });
        }
    }

    pub fn finish(mut self) -> Outcome {
        for &(first, other) in &self.aliases {
            let s = self.seen[first as usize];
            let o = &mut self.seen[other as usize];
            if *o == UNSEEN {
                *o = s;
            }
        }
        let mut classes: Vec<ClassCount> = self
            .class_names
            .iter()
            .enumerate()
            .map(|(i, c)| ClassCount {
                class: (*c).to_owned(),
                registered: 0,
                healthy: 0,
                unregistered: self.unregistered[i],
            })
            .collect();
        let mut s = Summary {
            registered: self.rows.len() as u64,
            live: self.live,
            ..Summary::default()
        };
        for (i, r) in self.rows.iter().enumerate() {
            let c = self.row_class[i] as usize;
            classes[c].registered += 1;
            match self.seen[i] {
                HEALTHY => classes[c].healthy += 1,
                MISMATCHED => s.mismatched += 1,
                _ => {
                    s.missing += 1;
                    let ids = self.hosts.resolve(&r.host);
                    self.found.push(Found {
                        kind: Kind::Missing,
                        class: r.class.clone(),
                        key: r.key.clone(),
                        host: r.host.clone(),
                        host_id: (ids.len() == 1).then(|| ids[0].to_owned()),
                        ci_id: None,
                        attribute: None,
                        expected: None,
                        actual: None,
                    });
                }
            }
        }
        s.unregistered = self.unregistered.iter().sum();
        classes.sort_by(|a, b| a.class.cmp(&b.class));
        self.found.sort_by(|a, b| {
            (a.kind, &a.class, &a.host, &a.key, &a.attribute).cmp(&(
                b.kind,
                &b.class,
                &b.host,
                &b.key,
                &b.attribute,
            ))
        });
        Outcome {
            summary: s,
            classes,
            found: self.found,
        }
    }
}
