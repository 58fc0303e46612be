//! Allow and deny lists of software.
//!
//! An entry names software by case-insensitive globs (`*`, `?`) on the normalised vendor,
//! product and edition and/or the package name; every field given must match, and at least
//! one must be given. Deny-listed installs become security incidents (one alert per host
//! and package CI, see [`super`]); when the allow list is non-empty, every install that no
//! allow entry matches is reported as unapproved (a list, no incident). A package on both
//! lists is denied.

use serde::{Deserialize, Serialize};

use crate::selector::Glob;

use super::normalise::Product;

/// Most entries per list.
pub const MAX_ENTRIES: usize = 2_000;
/// Longest field of an entry.
pub const MAX_ENTRY_FIELD: usize = 256;

/// One list entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edition: Option<String>,
    /// Glob on the package name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Why (shown in the incident for a deny entry).
    #[serde(default)]
    pub reason: String,
}

/// The lists document of the API and of `lists_file`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lists {
    #[serde(default)]
    pub allow: Vec<ListEntry>,
    #[serde(default)]
    pub deny: Vec<ListEntry>,
}

/// Lists that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidLists {
    #[error("the {list} list has {n} entries; at most {MAX_ENTRIES} are accepted")]
    TooMany { list: &'static str, n: usize },
    #[error("{list} entry {index}: {reason}")]
    Entry {
        list: &'static str,
        index: usize,
        reason: &'static str,
    },
}

impl Lists {
    pub fn validate(&self) -> Result<(), InvalidLists> {
        for (list, entries) in [("allow", &self.allow), ("deny", &self.deny)] {
            if entries.len() > MAX_ENTRIES {
                return Err(InvalidLists::TooMany {
                    list,
                    n: entries.len(),
                });
            }
            for (i, e) in entries.iter().enumerate() {
                let fields = [&e.vendor, &e.product, &e.edition, &e.package];
                let err = |reason| InvalidLists::Entry {
                    list,
                    index: i + 1,
                    reason,
                };
                if fields
                    .iter()
                    .all(|f| f.as_deref().is_none_or(|s| s.trim().is_empty()))
                {
                    return Err(err(
                        "give at least one of vendor, product, edition, package",
                    ));
                }
                if fields
                    .iter()
                    .any(|f| f.as_deref().is_some_and(|s| s.len() > MAX_ENTRY_FIELD))
                    || e.reason.len() > MAX_ENTRY_FIELD
                {
                    return Err(err("a field is longer than 256 bytes"));
                }
            }
        }
        Ok(())
    }
}

struct CompiledEntry {
    vendor: Option<Glob>,
    product: Option<Glob>,
    edition: Option<Glob>,
    package: Option<Glob>,
    reason: String,
}

impl CompiledEntry {
    fn new(e: &ListEntry) -> Self {
        let g = |f: &Option<String>| {
            f.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Glob::new(s.to_lowercase()))
        };
        CompiledEntry {
            vendor: g(&e.vendor),
            product: g(&e.product),
            edition: g(&e.edition),
            package: g(&e.package),
            reason: e.reason.clone(),
        }
    }

    /// `p` and `package` lowercased by the caller.
    fn matches(&self, p: &Product, package: &str) -> bool {
        let m = |g: &Option<Glob>, s: &str| g.as_ref().is_none_or(|g| g.matches(s));
        m(&self.vendor, &p.vendor)
            && m(&self.product, &p.product)
            && m(&self.edition, &p.edition)
            && m(&self.package, package)
    }
}

/// The lists compiled for matching.
pub struct ListMatcher {
    allow: Vec<CompiledEntry>,
    deny: Vec<CompiledEntry>,
}

/// The lists' verdict on one install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// The allow list is not empty and nothing on it matches.
    Unapproved,
    /// The reason of the first matching deny entry.
    Denied(String),
}

impl ListMatcher {
    pub fn new(lists: &Lists) -> Self {
        ListMatcher {
            allow: lists.allow.iter().map(CompiledEntry::new).collect(),
            deny: lists.deny.iter().map(CompiledEntry::new).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn verdict(&self, p: &Product, package: &str) -> Verdict {
        if self.is_empty() {
            return Verdict::Allowed;
        }
        let lp = Product {
            vendor: p.vendor.to_lowercase(),
            product: p.product.to_lowercase(),
            edition: p.edition.to_lowercase(),
        };
        let lpkg = package.to_lowercase();
        if let Some(d) = self.deny.iter().find(|e| e.matches(&lp, &lpkg)) {
            let reason = if d.reason.is_empty() {
                "deny-listed software".to_owned()
            } else {
                d.reason.clone()
            };
            return Verdict::Denied(reason);
        }
        if self.allow.is_empty() || self.allow.iter().any(|e| e.matches(&lp, &lpkg)) {
            Verdict::Allowed
        } else {
            Verdict::Unapproved
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn p(v: &str, pr: &str) -> Product {
        Product {
            vendor: v.into(),
            product: pr.into(),
            edition: String::new(),
        }
    }

    #[test]
    fn deny_beats_allow_and_allow_list_reports_the_rest() {
        let lists = Lists {
            allow: vec![ListEntry {
                vendor: Some("debian".into()),
                ..Default::default()
            }],
            deny: vec![ListEntry {
                product: Some("team*".into()),
                reason: "remote access tools are banned".into(),
                ..Default::default()
            }],
        };
        lists.validate().unwrap();
        let m = ListMatcher::new(&lists);
        assert_eq!(m.verdict(&p("Debian", "bash"), "bash"), Verdict::Allowed);
        assert_eq!(
            m.verdict(&p("TeamViewer", "TeamViewer"), "teamviewer"),
            Verdict::Denied("remote access tools are banned".into())
        );
        assert_eq!(
            m.verdict(&p("Google", "Chrome"), "google-chrome-stable"),
            Verdict::Unapproved
        );
        let empty = ListMatcher::new(&Lists::default());
        assert_eq!(empty.verdict(&p("a", "b"), "c"), Verdict::Allowed);
    }

    #[test]
    fn an_entry_needs_a_field() {
        let lists = Lists {
            allow: vec![],
            deny: vec![ListEntry::default()],
        };
        assert!(matches!(
            lists.validate(),
            Err(InvalidLists::Entry {
                list: "deny",
                index: 1,
                ..
            })
        ));
    }
}
