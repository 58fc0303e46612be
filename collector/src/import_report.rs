//! What an all-or-nothing import (the audit register, licence entitlements) says when it
//! refuses: every problem counted, the first [`MAX_REPORTED_ERRORS`] listed with their row.

use serde::{Deserialize, Serialize};

/// Problems listed in one refusal (the count says how many there were).
pub const MAX_REPORTED_ERRORS: usize = 20;

/// One problem of an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    /// CSV: the line number (header = 1); JSON: the 1-based index in the array; 0: the
    /// whole import.
    pub row: usize,
    pub reason: String,
}

/// An import refused as a whole: nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("import refused, nothing was changed: {}{}", summary(.errors), more(.errors.len(), *.total))]
pub struct ImportError {
    /// The first [`MAX_REPORTED_ERRORS`] problems.
    pub errors: Vec<RowError>,
    /// How many problems there were.
    pub total: usize,
}

fn summary(errors: &[RowError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.row == 0 {
                e.reason.clone()
            } else {
                format!("row {}: {}", e.row, e.reason)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn more(shown: usize, total: usize) -> String {
    if total > shown {
        format!(" (and {} more)", total - shown)
    } else {
        String::new()
    }
}

/// The problems of one import so far.
#[derive(Default)]
pub(crate) struct Problems {
    errors: Vec<RowError>,
    total: usize,
}

impl Problems {
    pub(crate) fn add(&mut self, row: usize, reason: impl Into<String>) {
        self.total += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(RowError {
                row,
                reason: reason.into(),
            });
        }
    }

    /// Whether any problem was found.
    pub(crate) fn any(&self) -> bool {
        self.total > 0
    }

    /// `ok` if there were none, else the refusal.
    pub(crate) fn finish<T>(self, ok: T) -> Result<T, ImportError> {
        if self.total == 0 {
            Ok(ok)
        } else {
            Err(ImportError {
                errors: self.errors,
                total: self.total,
            })
        }
    }
}

/// A refusal of the whole import (row 0) for one reason.
pub(crate) fn whole(reason: impl Into<String>) -> ImportError {
    ImportError {
        errors: vec![RowError {
            row: 0,
            reason: reason.into(),
        }],
        total: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_first_problems_and_counts_all() {
        let mut p = Problems::default();
        for i in 0..(MAX_REPORTED_ERRORS + 5) {
            p.add(i + 2, format!("bad {i}"));
        }
        let Err(e) = p.finish(()) else {
            panic!("problems must refuse the import");
        };
        assert_eq!(e.errors.len(), MAX_REPORTED_ERRORS);
        assert_eq!(e.total, MAX_REPORTED_ERRORS + 5);
        let text = e.to_string();
        assert!(text.starts_with("import refused, nothing was changed: row 2: bad 0; "));
        assert!(text.ends_with(" (and 5 more)"), "{text}");
        assert_eq!(
            whole("empty file").to_string(),
            "import refused, nothing was changed: empty file"
        );
        assert_eq!(Problems::default().finish(7), Ok(7));
    }
}
