//! How an incident is kept in the store: a header record (collection `incident`: the
//! incident without its alerts and timeline), one record per alert (`incident_alert`,
//! id `<number>/<position>`) and one per timeline entry (`incident_log`,
//! id `<number>/<absolute index>`).
//!
//! Why apart: an incident holds up to [`MAX_ALERTS`] alerts and [`MAX_TIMELINE`] timeline
//! entries. Kept whole in one record it reached ~700 KB under an alert storm and was
//! rewritten at every step that touched it, and sled writes a value or a leaf over 128 KiB
//! as a blob file of its own (a leaf of sixteen such incidents: an 8 MB blob per
//! consolidation). A step now writes the header, the alerts that changed and the timeline
//! entries that were added or dropped.
//!
//! Invariants:
//! - Alerts are only appended or changed in place, never removed or reordered (the
//!   correlator's key index relies on it too), so a position names one alert.
//! - The timeline keeps its first entry and, once full, drops the oldest after it
//!   ([`Incident::log`]); entry `i ≥ 1` has the absolute index `i + timeline_overflow`,
//!   entry 0 has 0. Entries never change, so an absolute index names one entry.
//! - What the store holds of an incident in memory is tracked as a [`Shape`]: a hash per
//!   alert and the timeline's (overflow, length). A changed alert whose hash equals the
//!   stored one's (odds 2⁻⁶⁴) would not be rewritten.
//! - Records written before this layout (alerts and timeline inline in the header) are read
//!   as they are; an incident loaded from one has no [`Shape`], so its next write (it is
//!   open: only open incidents change) moves it whole to this layout in that step's atomic
//!   batch. The two layouts never mix within one incident.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde::de::DeserializeOwned;

use super::{Batch, C_INCIDENT, JudgmentError, decode};
use crate::incidents::{AlertRecord, Incident, MAX_ALERTS, MAX_TIMELINE, TimelineEntry};
use crate::store::Store;

/// An incident's alerts: `<number>/<position, 5 digits>`.
pub(super) const C_ALERT: &str = "incident_alert";
/// An incident's timeline entries: `<number>/<absolute index, 20 digits>`.
pub(super) const C_LOG: &str = "incident_log";

/// Records read per store call when collecting an incident's alerts or timeline.
const PAGE: usize = 512;

/// What the store holds of one incident (in this layout).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Shape {
    /// A hash of each stored alert, by position.
    alerts: Vec<u64>,
    /// The timeline's overflow count and length as stored.
    log_overflow: u64,
    log_len: usize,
}

impl Shape {
    /// The shape `inc` has once written whole.
    pub(super) fn of(inc: &Incident) -> Shape {
        Shape {
            alerts: inc.alerts.iter().map(hash_alert).collect(),
            log_overflow: inc.timeline_overflow,
            log_len: inc.timeline.len(),
        }
    }
}

fn hash_alert(a: &AlertRecord) -> u64 {
    let mut h = DefaultHasher::new();
    a.hash(&mut h);
    h.finish()
}

fn alert_id(number: &str, position: usize) -> String {
    format!("{number}/{position:05}")
}

fn log_id(number: &str, index: u64) -> String {
    format!("{number}/{index:020}")
}

/// The absolute indices of a timeline of `len` entries that dropped `overflow`, ascending.
fn log_indices(overflow: u64, len: usize) -> impl Iterator<Item = u64> {
    (0..len as u64).map(move |i| if i == 0 { 0 } else { i + overflow })
}

/// Puts into `batch` what brings the store's copy of `inc` from `stored` (None: nothing of
/// it in this layout) to `inc`; returns the shape the store holds once `batch` commits.
pub(super) fn write(batch: &mut Batch, inc: &mut Incident, stored: Option<&Shape>) -> Shape {
    // The header is the incident with its lists left out for the time it is encoded (not
    // a copy: an incident can hold thousands of alerts).
    let alerts = std::mem::take(&mut inc.alerts);
    let timeline = std::mem::take(&mut inc.timeline);
    batch.put(C_INCIDENT, &inc.number, &*inc);
    inc.alerts = alerts;
    inc.timeline = timeline;

    let shape = Shape::of(inc);
    let number = inc.number.as_str();
    for (position, (alert, hash)) in inc.alerts.iter().zip(&shape.alerts).enumerate() {
        if stored.and_then(|s| s.alerts.get(position)) != Some(hash) {
            batch.put(C_ALERT, &alert_id(number, position), alert);
        }
    }

    // Both index lists are ascending: one merge walk finds what to add and what to drop.
    let mut old = stored
        .map(|s| log_indices(s.log_overflow, s.log_len).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .peekable();
    for (entry, index) in inc
        .timeline
        .iter()
        .zip(log_indices(inc.timeline_overflow, inc.timeline.len()))
    {
        while let Some(gone) = old.next_if(|&o| o < index) {
            batch.delete(C_LOG, &log_id(number, gone));
        }
        if old.next_if_eq(&index).is_none() {
            batch.put(C_LOG, &log_id(number, index), entry);
        }
    }
    for gone in old {
        batch.delete(C_LOG, &log_id(number, gone));
    }
    shape
}

/// Whether `header` was stored in the layout before this one (its lists inline).
pub(super) fn is_inline(header: &Incident) -> bool {
    !header.alerts.is_empty() || !header.timeline.is_empty()
}

/// The incident whose header the store returned, with its alerts and timeline.
pub(super) fn complete(store: &dyn Store, mut inc: Incident) -> Result<Incident, JudgmentError> {
    if is_inline(&inc) {
        return Ok(inc);
    }
    inc.alerts = of_incident::<AlertRecord>(store, C_ALERT, &inc.number, MAX_ALERTS)?;
    inc.timeline = of_incident::<TimelineEntry>(store, C_LOG, &inc.number, MAX_TIMELINE)?;
    Ok(inc)
}

/// The records of `collection` under `<number>/`, in id order, at most `limit`.
fn of_incident<T: DeserializeOwned>(
    store: &dyn Store,
    collection: &'static str,
    number: &str,
    limit: usize,
) -> Result<Vec<T>, JudgmentError> {
    let prefix = format!("{number}/");
    let mut out = Vec::new();
    let mut after = prefix.clone();
    while out.len() < limit {
        let page = store.records(collection, Some(&after), PAGE.min(limit - out.len()))?;
        let Some((last, _)) = page.last() else {
            break;
        };
        let last = last.clone();
        for (id, bytes) in page {
            if !id.starts_with(&prefix) {
                return Ok(out);
            }
            out.push(decode(collection, &id, &bytes)?);
        }
        after = last;
    }
    Ok(out)
}

#[cfg(test)]
#[path = "stored_tests.rs"]
mod tests;
