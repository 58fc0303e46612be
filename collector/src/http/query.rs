//! Query parameters of the API, parsed strictly: an unknown parameter, a malformed value or
//! one out of range is an [`InvalidParam`] (a 400 naming the parameter), never a default in
//! disguise. An empty value (`class=`) means the parameter was not given, so URL templates
//! with blank slots work. Unknown class names are not an error: they simply match nothing.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::store::CiFilter;

/// Page size of `GET /api/v1/cis` when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 1000;
/// Longest accepted parameter value, in bytes.
pub const MAX_PARAM_BYTES: usize = 256;
/// Metrics range when `from` is not given: the hour before `to`.
pub const DEFAULT_METRICS_RANGE: Duration = Duration::from_secs(3600);
/// Widest metrics range one request may ask for (one-minute windows: 1440 per host).
pub const MAX_METRICS_RANGE: Duration = Duration::from_secs(24 * 3600);

/// A query parameter that cannot be used as given.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {param}: {reason}")]
pub struct InvalidParam {
    pub param: &'static str,
    pub reason: String,
}

impl InvalidParam {
    fn new(param: &'static str, reason: impl Into<String>) -> Self {
        Self {
            param,
            reason: reason.into(),
        }
    }
}

/// `GET /api/v1/cis` parameters, as received.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CisParams {
    pub class: Option<String>,
    pub host: Option<String>,
    pub q: Option<String>,
    pub include_absent: Option<String>,
    pub limit: Option<String>,
    pub after: Option<String>,
}

impl CisParams {
    /// The store filter and the page size. The filter asks for one CI more than the page,
    /// so the handler learns whether another page follows without a second read.
    pub fn into_filter(self) -> Result<(CiFilter, usize), InvalidParam> {
        let page = match given("limit", self.limit)? {
            None => DEFAULT_LIMIT,
            Some(s) => parse_limit(&s).map_err(|r| InvalidParam::new("limit", r))?,
        };
        let include_absent = match given("include_absent", self.include_absent)? {
            None => false,
            Some(s) => parse_bool(&s).map_err(|r| InvalidParam::new("include_absent", r))?,
        };
        let filter = CiFilter {
            class: given("class", self.class)?,
            host: given("host", self.host)?,
            q: given("q", self.q)?,
            include_absent,
            limit: page + 1,
            after: given("after", self.after)?,
        };
        Ok((filter, page))
    }
}

/// `GET /api/v1/hosts/{id}/metrics` parameters, as received.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsParams {
    pub from: Option<String>,
    pub to: Option<String>,
}

impl MetricsParams {
    /// `[from, to)`: `to` defaults to `now`, `from` to an hour before `to`; `from` must be
    /// before `to` and the range at most [`MAX_METRICS_RANGE`].
    pub fn range(self, now: SystemTime) -> Result<(SystemTime, SystemTime), InvalidParam> {
        let to = match given("to", self.to)? {
            None => now,
            Some(s) => parse_time(&s).map_err(|r| InvalidParam::new("to", r))?,
        };
        let from = match given("from", self.from)? {
            Some(s) => parse_time(&s).map_err(|r| InvalidParam::new("from", r))?,
            None => to
                .checked_sub(DEFAULT_METRICS_RANGE)
                .ok_or_else(|| InvalidParam::new("to", "too early"))?,
        };
        let width = to
            .duration_since(from)
            .map_err(|_| InvalidParam::new("from", "must be before to"))?;
        if width.is_zero() {
            return Err(InvalidParam::new("from", "must be before to"));
        }
        if width > MAX_METRICS_RANGE {
            return Err(InvalidParam::new(
                "from",
                format!(
                    "range wider than {}",
                    humantime::format_duration(MAX_METRICS_RANGE)
                ),
            ));
        }
        Ok((from, to))
    }
}

/// A non-empty value within [`MAX_PARAM_BYTES`], or `None` for absent or empty.
pub fn given(param: &'static str, value: Option<String>) -> Result<Option<String>, InvalidParam> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() > MAX_PARAM_BYTES => Err(InvalidParam::new(
            param,
            format!("longer than {MAX_PARAM_BYTES} bytes"),
        )),
        Some(v) => Ok(Some(v)),
    }
}

/// A page size in `1..=MAX_LIMIT`.
pub fn parse_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a number from 1 to {MAX_LIMIT}")),
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, any case).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// An RFC 3339 timestamp: `2026-11-25T10:00:00Z`, with optional fractional seconds, or with
/// a numeric offset (`+01:00`). A `+` that arrived as a space (an unencoded `+` in a query
/// string decodes to one) is read as `+`.
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let err = || format!("{s:?} is not an RFC 3339 time such as 2026-11-25T10:00:00Z");
    if !s.is_ascii() || s.len() < "2026-11-25T10:00:00Z".len() {
        return Err(err());
    }
    let upper = s.to_ascii_uppercase();
    if upper.ends_with('Z') {
        return humantime::parse_rfc3339(&upper).map_err(|_| err());
    }
    // `[+- ]HH:MM` at the end.
    let (local, offset) = upper.split_at(upper.len() - 6);
    let ob = offset.as_bytes();
    let sign = match ob[0] {
        b'+' | b' ' => 1i64,
        b'-' => -1i64,
        _ => return Err(err()),
    };
    if ob[3] != b':' {
        return Err(err());
    }
    let digits = |a: u8, b: u8| -> Option<u64> {
        let a = char::from(a).to_digit(10)?;
        let b = char::from(b).to_digit(10)?;
        Some(u64::from(a * 10 + b))
    };
    let (Some(hours), Some(minutes)) = (digits(ob[1], ob[2]), digits(ob[4], ob[5])) else {
        return Err(err());
    };
    if hours > 23 || minutes > 59 {
        return Err(err());
    }
    let as_utc = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|_| err())?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    // local = utc + offset, so utc = local - offset.
    let utc = if sign > 0 {
        as_utc.checked_sub(shift)
    } else {
        as_utc.checked_add(shift)
    };
    utc.ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn cis_defaults() {
        let (f, page) = CisParams::default().into_filter().unwrap();
        assert_eq!(page, DEFAULT_LIMIT);
        assert_eq!(f.limit, DEFAULT_LIMIT + 1);
        assert!(!f.include_absent);
        assert!(f.class.is_none() && f.host.is_none() && f.q.is_none() && f.after.is_none());
    }

    #[test]
    fn cis_empty_values_are_absent() {
        let p = CisParams {
            class: Some(String::new()),
            include_absent: Some(String::new()),
            limit: Some(String::new()),
            ..CisParams::default()
        };
        let (f, page) = p.into_filter().unwrap();
        assert_eq!(
            (f.class, f.include_absent, page),
            (None, false, DEFAULT_LIMIT)
        );
    }

    #[test]
    fn cis_bad_values() {
        for (limit, ok) in [("0", false), ("1", true), ("1000", true), ("1001", false)] {
            let p = CisParams {
                limit: Some(limit.into()),
                ..CisParams::default()
            };
            assert_eq!(p.into_filter().is_ok(), ok, "limit={limit}");
        }
        let p = CisParams {
            limit: Some("ten".into()),
            ..CisParams::default()
        };
        assert_eq!(p.into_filter().unwrap_err().param, "limit");
        let p = CisParams {
            include_absent: Some("maybe".into()),
            ..CisParams::default()
        };
        assert_eq!(p.into_filter().unwrap_err().param, "include_absent");
        let p = CisParams {
            q: Some("x".repeat(MAX_PARAM_BYTES + 1)),
            ..CisParams::default()
        };
        assert_eq!(p.into_filter().unwrap_err().param, "q");
    }

    #[test]
    fn times() {
        let t = at("2026-11-25T10:00:00Z");
        assert_eq!(parse_time("2026-11-25T10:00:00Z"), Ok(t));
        assert_eq!(parse_time("2026-11-25t10:00:00z"), Ok(t));
        assert_eq!(parse_time("2026-11-25T11:30:00+01:30"), Ok(t));
        assert_eq!(parse_time("2026-11-25T11:30:00 01:30"), Ok(t));
        assert_eq!(parse_time("2026-11-25T05:00:00-05:00"), Ok(t));
        assert_eq!(
            parse_time("2026-11-25T10:00:00.250Z").unwrap(),
            t + Duration::from_millis(250)
        );
        for bad in [
            "",
            "yesterday",
            "2026-11-25",
            "2026-11-25T10:00:00",
            "2026-11-25T10:00:00+25:00",
            "2026-11-25T10:00:00+0100",
            "2026-13-25T10:00:00Z",
            "2026-11-25T10:00:00Zé",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_range() {
        let now = at("2026-11-25T10:00:00Z");
        let p = MetricsParams::default();
        assert_eq!(p.range(now), Ok((at("2026-11-25T09:00:00Z"), now)));
        let p = MetricsParams {
            from: Some("2026-11-24T10:00:00Z".into()),
            to: None,
        };
        assert_eq!(p.range(now), Ok((at("2026-11-24T10:00:00Z"), now)));
        let p = MetricsParams {
            from: Some("2026-11-24T09:59:59Z".into()),
            to: None,
        };
        assert_eq!(p.range(now).unwrap_err().param, "from");
        let p = MetricsParams {
            from: Some("2026-11-25T10:00:00Z".into()),
            to: Some("2026-11-25T10:00:00Z".into()),
        };
        assert_eq!(p.range(now).unwrap_err().param, "from");
        let p = MetricsParams {
            from: None,
            to: Some("soon".into()),
        };
        assert_eq!(p.range(now).unwrap_err().param, "to");
    }

    proptest! {
        #[test]
        fn parse_time_never_panics(s in "\\PC{0,40}") {
            let _ = parse_time(&s);
        }

        #[test]
        fn parse_time_round_trips(secs in 0u64..(250 * 365 * 86_400), offset_min in -1439i64..=1439) {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let utc = humantime::format_rfc3339_seconds(t).to_string();
            prop_assert_eq!(parse_time(&utc), Ok(t));
            // The same instant written in local time with an offset.
            let local = if offset_min >= 0 {
                t + Duration::from_secs(offset_min.unsigned_abs() * 60)
            } else {
                match t.checked_sub(Duration::from_secs(offset_min.unsigned_abs() * 60)) {
                    Some(l) if l >= SystemTime::UNIX_EPOCH => l,
                    _ => return Ok(()),
                }
            };
            let local = humantime::format_rfc3339_seconds(local).to_string();
            let sign = if offset_min >= 0 { '+' } else { '-' };
            let m = offset_min.unsigned_abs();
            let written = format!("{}{sign}{:02}:{:02}", local.trim_end_matches('Z'), m / 60, m % 60);
            prop_assert_eq!(parse_time(&written), Ok(t), "{}", written);
        }

        #[test]
        fn limit_accepts_exactly_the_range(n in 0usize..5000) {
            prop_assert_eq!(parse_limit(&n.to_string()).is_ok(), (1..=MAX_LIMIT).contains(&n));
        }
    }
}
