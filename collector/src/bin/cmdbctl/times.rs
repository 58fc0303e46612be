//! Time arguments: an RFC 3339 time (`2026-11-25T10:00:00Z`, or with an offset such as
//! `+01:00`), `now`, or a duration relative to now (`+2h`, `-30m`, `+1d 12h`; units as
//! humantime reads them: s, m, h, d, w, …).
//!
//! Parsing keeps a relative time relative; [`TimeArg::resolve`] anchors it when the
//! command runs, so parsing does not depend on the clock.

use std::time::{Duration, SystemTime};

use cmdb_collector::http::query::parse_time;

/// 9999-12-31T23:59:59Z, the last time RFC 3339 can write.
const LATEST: Duration = Duration::from_secs(253_402_300_799);

/// A time as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeArg {
    /// An absolute time.
    At(SystemTime),
    /// Now plus (`later`) or minus this much.
    Relative { later: bool, by: Duration },
}

// === impl TimeArg ===

impl TimeArg {
    /// The time this argument means when the command runs at `now`.
    pub fn resolve(self, now: SystemTime) -> Result<SystemTime, String> {
        let t = match self {
            TimeArg::At(t) => Some(t),
            TimeArg::Relative { later: true, by } => now.checked_add(by),
            TimeArg::Relative { later: false, by } => now.checked_sub(by),
        };
        // RFC 3339 (and the API) cover 1970 to 9999 only.
        t.filter(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .is_ok_and(|d| d <= LATEST)
        })
        .ok_or_else(|| "the time is out of range (1970 to 9999)".to_owned())
    }
}

/// A time: RFC 3339, `now`, `+DURATION` or `-DURATION`.
pub fn time(s: &str) -> Result<TimeArg, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(TimeArg::Relative {
            later: true,
            by: Duration::ZERO,
        });
    }
    if let Some(d) = s.strip_prefix('+') {
        return duration(d).map(|by| TimeArg::Relative { later: true, by });
    }
    if let Some(d) = s.strip_prefix('-') {
        return duration(d).map(|by| TimeArg::Relative { later: false, by });
    }
    parse_time(s).map(TimeArg::At).map_err(|_| {
        format!("{s:?} is not a time: give RFC 3339 (2026-11-25T10:00:00Z), now, +2h or -30m")
    })
}

/// An expiry: like [`time`], and a bare duration (`7d`) also means that long from now.
pub fn expiry(s: &str) -> Result<TimeArg, String> {
    let t = s.trim();
    if t.starts_with(|c: char| c.is_ascii_digit())
        && let Ok(by) = humantime::parse_duration(t)
    {
        return Ok(TimeArg::Relative { later: true, by });
    }
    time(s).map_err(|_| {
        format!("{s:?} is not an expiry: give a duration (7d, 12h) or a time (RFC 3339, +2h)")
    })
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration such as 2h, 30m or 7d ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn absolute_and_relative_times() {
        let now = at("2026-11-25T10:00:00Z");
        let r = |s: &str| time(s).unwrap().resolve(now).unwrap();
        assert_eq!(r("2026-11-25T12:00:00Z"), at("2026-11-25T12:00:00Z"));
        assert_eq!(r("2026-11-25T12:00:00+01:00"), at("2026-11-25T11:00:00Z"));
        assert_eq!(r("now"), now);
        assert_eq!(r("+2h"), at("2026-11-25T12:00:00Z"));
        assert_eq!(r("-30m"), at("2026-11-25T09:30:00Z"));
        assert_eq!(r("+1d 12h"), at("2026-11-26T22:00:00Z"));
        assert_eq!(r("+7d"), at("2026-12-02T10:00:00Z"));
        for bad in ["", "2h", "+", "+2 parsecs", "yesterday", "2026-11-25", "-x"] {
            assert!(time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expiries_take_bare_durations() {
        let now = at("2026-11-25T10:00:00Z");
        let r = |s: &str| expiry(s).unwrap().resolve(now).unwrap();
        assert_eq!(r("7d"), at("2026-12-02T10:00:00Z"));
        assert_eq!(r("+12h"), at("2026-11-25T22:00:00Z"));
        assert_eq!(r("2027-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"));
        assert!(expiry("soon").is_err());
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let now = at("2026-11-25T10:00:00Z");
        for s in ["-1000000000d", "+1000000000d", "-60y"] {
            assert!(time(s).unwrap().resolve(now).is_err(), "{s}");
        }
    }
}
