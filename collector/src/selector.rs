//! CI selectors and time windows: the scope language of baselines, change records,
//! waivers, criticality rules and service monitors.
//!
//! A selector is one or more space-separated `field=glob` terms that must all hold:
//! `host=web-* class=package`, `ci=ci-4f1c2a9b0e7d3c55`, `class=file key=/etc/ssh/*`.
//! Fields: `host` (matches the hostname or the host id), `class`, `key`, `ci` (the CI id).
//! Globs: `*` is any run of characters (also none, also `/`), `?` exactly one character,
//! everything else literal and case-sensitive (hostnames are compared lower-cased). A
//! repeated field is an error, not an OR: a scope that needs an OR is a list of selectors.
//!
//! Promises: parsing is total (any input gives a selector or a [`SelectorError`] naming
//! the bad term), bounded ([`MAX_SELECTOR_BYTES`], [`MAX_TERMS`]), and matching is linear
//! in the glob and the subject (no backtracking blow-up).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest selector text accepted.
pub const MAX_SELECTOR_BYTES: usize = 1024;
/// Most terms in one selector.
pub const MAX_TERMS: usize = 8;

/// A selector that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Nothing to select with.
    #[error("empty selector (give at least one term such as host=web-*)")]
    Empty,
    /// Over [`MAX_SELECTOR_BYTES`] or [`MAX_TERMS`].
    #[error("selector too long: at most {MAX_TERMS} terms and {MAX_SELECTOR_BYTES} bytes")]
    TooLong,
    /// A term without `=`, or with an empty side.
    #[error("malformed term {0:?}: expected field=pattern")]
    Malformed(String),
    /// A field that is not host, class, key or ci.
    #[error("unknown field {0:?} in selector (fields: host, class, key, ci)")]
    UnknownField(String),
    /// The same field twice.
    #[error("field {0:?} given twice in one selector (use a list of selectors for OR)")]
    Repeated(String),
    /// A pattern with a control character.
    #[error("pattern {0:?} contains a control character")]
    ControlChar(String),
}

/// The fields a selector term can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Host,
    Class,
    Key,
    Ci,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Host => "host",
            Field::Class => "class",
            Field::Key => "key",
            Field::Ci => "ci",
        }
    }
}

/// What a selector is matched against: one CI (or a host, with class `host`).
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub host_id: &'a str,
    pub hostname: Option<&'a str>,
    pub class: &'a str,
    pub key: &'a str,
    pub ci_id: &'a str,
}

/// A parsed selector; its text form round-trips through `Display`/`FromStr` and serde.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<(Field, Glob)>,
}

impl Selector {
    /// Whether every term holds for `s`.
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        self.terms.iter().all(|(field, glob)| match field {
            Field::Host => {
                glob.matches(s.host_id)
                    || s.hostname
                        .is_some_and(|h| glob.matches(&h.to_ascii_lowercase()))
            }
            Field::Class => glob.matches(s.class),
            Field::Key => glob.matches(s.key),
            Field::Ci => glob.matches(s.ci_id),
        })
    }

    /// Whether the selector can match CIs of `host` at all (its host term, if any, holds);
    /// used to find the hosts a scope touches without looking at every CI.
    pub fn may_match_host(&self, host_id: &str, hostname: Option<&str>) -> bool {
        self.terms.iter().all(|(field, glob)| match field {
            Field::Host => {
                glob.matches(host_id)
                    || hostname.is_some_and(|h| glob.matches(&h.to_ascii_lowercase()))
            }
            _ => true,
        })
    }

    /// The literal class the selector is restricted to, if its class term has no wildcard.
    pub fn exact_class(&self) -> Option<&str> {
        self.terms.iter().find_map(|(f, g)| match f {
            Field::Class if g.is_literal() => Some(g.text.as_str()),
            _ => None,
        })
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, SelectorError> {
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(SelectorError::TooLong);
        }
        let mut terms: Vec<(Field, Glob)> = Vec::new();
        for term in text.split_ascii_whitespace() {
            if terms.len() == MAX_TERMS {
                return Err(SelectorError::TooLong);
            }
            let Some((field, pattern)) = term.split_once('=') else {
                return Err(SelectorError::Malformed(term.to_owned()));
            };
            if field.is_empty() || pattern.is_empty() {
                return Err(SelectorError::Malformed(term.to_owned()));
            }
            let field = match field {
                "host" => Field::Host,
                "class" => Field::Class,
                "key" => Field::Key,
                "ci" => Field::Ci,
                other => return Err(SelectorError::UnknownField(other.to_owned())),
            };
            if terms.iter().any(|(f, _)| *f == field) {
                return Err(SelectorError::Repeated(field.name().to_owned()));
            }
            if pattern.chars().any(char::is_control) {
                return Err(SelectorError::ControlChar(pattern.to_owned()));
            }
            let pattern = if field == Field::Host {
                pattern.to_ascii_lowercase()
            } else {
                pattern.to_owned()
            };
            terms.push((field, Glob::new(pattern)));
        }
        if terms.is_empty() {
            return Err(SelectorError::Empty);
        }
        Ok(Selector { terms })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (field, glob)) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", field.name(), glob.text)?;
        }
        Ok(())
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether any selector of `scope` matches `s` (a scope is an OR of selectors).
pub fn scope_matches(scope: &[Selector], s: &Subject<'_>) -> bool {
    scope.iter().any(|sel| sel.matches(s))
}

/// A glob with `*` and `?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    text: String,
}

impl Glob {
    pub fn new(text: impl Into<String>) -> Self {
        Glob { text: text.into() }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn is_literal(&self) -> bool {
        !self.text.contains(['*', '?'])
    }

    /// Iterative wildcard matching with one backtrack point: O(len(glob) × len(subject))
    /// in the worst case, never exponential.
    pub fn matches(&self, subject: &str) -> bool {
        glob_match(self.text.as_bytes(), subject)
    }
}

fn glob_match(pattern: &[u8], subject: &str) -> bool {
    // ASCII (the common case: hostnames, classes, paths, package keys) matches bytes
    // without allocating; otherwise chars, so that `?` is one character, not one byte.
    if pattern.is_ascii() && subject.is_ascii() {
        return wildcard(pattern, subject.as_bytes());
    }
    let p: Vec<char> = String::from_utf8_lossy(pattern).chars().collect();
    let s: Vec<char> = subject.chars().collect();
    wildcard(&p, &s)
}

/// `*`/`?` matching with one backtrack point.
fn wildcard<T: Copy + PartialEq + Wild>(p: &[T], s: &[T]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(c) if c.is_star() => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(c) if c.is_any() || *c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| c.is_star())
}

trait Wild {
    fn is_star(&self) -> bool;
    fn is_any(&self) -> bool;
}

impl Wild for u8 {
    fn is_star(&self) -> bool {
        *self == b'*'
    }
    fn is_any(&self) -> bool {
        *self == b'?'
    }
}

impl Wild for char {
    fn is_star(&self) -> bool {
        *self == '*'
    }
    fn is_any(&self) -> bool {
        *self == '?'
    }
}

/// A time window `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub start: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub end: SystemTime,
}

/// A window whose end is not after its start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window ends ({end}) before or when it starts ({start})")]
pub struct InvalidWindow {
    pub start: String,
    pub end: String,
}

impl Window {
    /// A window, refusing `end <= start`.
    pub fn new(start: SystemTime, end: SystemTime) -> Result<Window, InvalidWindow> {
        if end <= start {
            return Err(InvalidWindow {
                start: humantime::format_rfc3339_seconds(start).to_string(),
                end: humantime::format_rfc3339_seconds(end).to_string(),
            });
        }
        Ok(Window { start, end })
    }

    pub fn contains(&self, t: SystemTime) -> bool {
        self.start <= t && t < self.end
    }

    /// Whether the window overlaps `[from, to)`.
    pub fn overlaps(&self, from: SystemTime, to: SystemTime) -> bool {
        self.start < to && from < self.end
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn subject<'a>(hostname: &'a str, class: &'a str, key: &'a str) -> Subject<'a> {
        Subject {
            host_id: "host-0123456789abcdef",
            hostname: Some(hostname),
            class,
            key,
            ci_id: "ci-aaaaaaaaaaaaaaaa",
        }
    }

    #[test]
    fn terms_must_all_hold() {
        let sel: Selector = "host=web-* class=package".parse().unwrap();
        assert!(sel.matches(&subject("web-1", "package", "dpkg:bash:amd64")));
        assert!(sel.matches(&subject("WEB-2", "package", "x")));
        assert!(!sel.matches(&subject("db-1", "package", "x")));
        assert!(!sel.matches(&subject("web-1", "file", "x")));
        let by_id: Selector = "host=host-0123* key=/etc/*".parse().unwrap();
        assert!(by_id.matches(&subject("db", "file", "/etc/ssh/sshd_config")));
        assert_eq!(by_id.to_string(), "host=host-0123* key=/etc/*");
        assert_eq!(sel.exact_class(), Some("package"));
    }

    #[test]
    fn bad_selectors_are_named() {
        for (text, want) in [
            ("", SelectorError::Empty),
            ("   ", SelectorError::Empty),
            ("host", SelectorError::Malformed("host".into())),
            ("host=", SelectorError::Malformed("host=".into())),
            ("=web", SelectorError::Malformed("=web".into())),
            ("colour=red", SelectorError::UnknownField("colour".into())),
            ("host=a host=b", SelectorError::Repeated("host".into())),
        ] {
            assert_eq!(text.parse::<Selector>().unwrap_err(), want, "{text:?}");
        }
        let long = "class=x ".repeat(200);
        assert_eq!(
            long.parse::<Selector>().unwrap_err(),
            SelectorError::TooLong
        );
    }

    #[test]
    fn globs() {
        let g = |p: &str, s: &str| Glob::new(p).matches(s);
        assert!(g("*", ""));
        assert!(g("a*c", "abbbc"));
        assert!(g("a?c", "abc"));
        assert!(!g("a?c", "ac"));
        assert!(g("*.conf", "/etc/x.conf"));
        assert!(!g("*.conf", "/etc/x.conf.bak"));
        assert!(g("é?", "éü"));
        // Pathological patterns stay fast.
        let s = "a".repeat(2000);
        assert!(!g(&format!("{}b", "*a".repeat(50)), &s));
    }

    #[test]
    fn windows_refuse_inverted_bounds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(Window::new(t, t).is_err());
        assert!(Window::new(t, t - Duration::from_secs(1)).is_err());
        let w = Window::new(t, t + Duration::from_secs(10)).unwrap();
        assert!(w.contains(t));
        assert!(!w.contains(t + Duration::from_secs(10)));
        assert!(w.overlaps(t + Duration::from_secs(9), t + Duration::from_secs(20)));
        assert!(!w.overlaps(t + Duration::from_secs(10), t + Duration::from_secs(20)));
    }

    /// A reference glob matcher: plain recursion (exponential, fine for short inputs).
    fn reference(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some('*'), _) => reference(&p[1..], s) || (!s.is_empty() && reference(p, &s[1..])),
            (Some('?'), Some(_)) => reference(&p[1..], &s[1..]),
            (Some(c), Some(d)) if c == d => reference(&p[1..], &s[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_reference(p in "[ab*?]{0,8}", s in "[ab]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let sc: Vec<char> = s.chars().collect();
            prop_assert_eq!(Glob::new(p.clone()).matches(&s), reference(&pc, &sc));
        }

        #[test]
        fn parsing_never_panics_and_round_trips(text in "\\PC{0,80}") {
            if let Ok(sel) = text.parse::<Selector>() {
                let again: Selector = sel.to_string().parse().unwrap();
                prop_assert_eq!(again, sel);
            }
        }

        #[test]
        fn a_literal_selector_matches_exactly_its_subject(
            host in "[a-z][a-z0-9-]{0,10}", class in "[a-z_]{1,10}", key in "[a-z/.:]{1,12}",
        ) {
            let sel: Selector = format!("host={host} class={class} key={key}").parse().unwrap();
            prop_assert!(sel.matches(&subject(&host, &class, &key)));
            let other_key = format!("{key}x");
            prop_assert!(!sel.matches(&subject(&host, &class, &other_key)));
        }

        #[test]
        fn window_contains_iff_inside(start in 0u64..1_000_000, len in 1u64..1_000_000, t in 0u64..3_000_000) {
            let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
            let w = Window::new(at(start), at(start + len)).unwrap();
            prop_assert_eq!(w.contains(at(t)), start <= t && t < start + len);
        }
    }
}
