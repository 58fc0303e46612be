//! Table and CSV views of the capacity answers. Tables show sizes in binary units and
//! times in RFC 3339; CSV keeps the API's raw numbers (one row per point, or per forecast)
//! so spreadsheets can compute with them.

use std::time::SystemTime;

use cmdb_collector::capacity::{Forecast, Status};
use serde::Deserialize;

use crate::render::when;
use crate::table::Table;

#[derive(Debug, Deserialize)]
pub struct ForecastList {
    pub items: Vec<Forecast>,
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Deserialize)]
pub struct SeriesList {
    pub items: Vec<Series>,
}

#[derive(Debug, Deserialize)]
pub struct Series {
    pub host_id: String,
    pub hostname: Option<String>,
    pub resource: String,
    pub unit: String,
    pub capacity: Option<f64>,
    pub tier: String,
    pub points: Vec<SeriesPoint>,
}

#[derive(Debug, Deserialize)]
pub struct SeriesPoint {
    pub t: String,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub p95: f64,
    #[serde(default)]
    pub samples: u64,
}

/// A value in its unit, for people: bytes in KiB/MiB/GiB/TiB.
pub fn amount(v: f64, unit: &str) -> String {
    match unit {
        "bytes" | "bytes_per_second" => {
            let suffix = if unit == "bytes" { "" } else { "/s" };
            let mut x = v;
            for u in ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] {
                if x.abs() < 1024.0 || u == "PiB" {
                    return if u == "B" {
                        format!("{x:.0} {u}{suffix}")
                    } else {
                        format!("{x:.1} {u}{suffix}")
                    };
                }
                x /= 1024.0;
            }
            format!("{v}")
        }
        "percent" => format!("{v:.1} %"),
        _ => format!("{v:.2}"),
    }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::AtRisk => "at_risk",
        Status::Ok => "ok",
        Status::NotEnoughData => "not_enough_data",
    }
}

pub fn forecast_table(items: &[Forecast], _now: SystemTime) -> String {
    let mut t = Table::new(&[
        "HOST",
        "RESOURCE",
        "STATUS",
        "CURRENT",
        "THRESHOLD",
        "TREND/DAY",
        "DAYS",
        "EXHAUSTION",
        "CONFIDENCE",
        "INCIDENT",
    ]);
    for f in items {
        let host = f.hostname.clone().unwrap_or_else(|| f.host_id.clone());
        t.row([
            host,
            f.resource.clone(),
            status(f.status).to_owned(),
            f.current.map_or("-".into(), |v| amount(v, &f.unit)),
            f.threshold.map_or("-".into(), |v| {
                format!(
                    "{} ({:.0} %)",
                    amount(v, &f.unit),
                    f.threshold_percent.unwrap_or(0.0)
                )
            }),
            f.slope_per_day.map_or("-".into(), |v| amount(v, &f.unit)),
            f.days_to_threshold
                .map_or("-".into(), |d| format!("{d:.1}")),
            f.exhaustion_at.map_or("-".into(), when),
            format!("{:.2}", f.confidence),
            f.incident.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if items.is_empty() {
        return "no forecasts (at risk: none; use --all for every forecast)\n".to_owned();
    }
    t.render()
}

pub fn series_table(items: &[Series]) -> String {
    let mut t = Table::new(&[
        "HOST", "RESOURCE", "TIER", "TIME", "MIN", "AVG", "MAX", "P95", "CAPACITY",
    ]);
    for s in items {
        let host = s.hostname.clone().unwrap_or_else(|| s.host_id.clone());
        let cap = s.capacity.map_or("-".into(), |c| amount(c, &s.unit));
        for p in &s.points {
            t.row([
                host.clone(),
                s.resource.clone(),
                s.tier.clone(),
                p.t.clone(),
                amount(p.min, &s.unit),
                amount(p.avg, &s.unit),
                amount(p.max, &s.unit),
                amount(p.p95, &s.unit),
                cap.clone(),
            ]);
        }
    }
    if items.is_empty() {
        return "no points in that range\n".to_owned();
    }
    t.render()
}

fn num(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn finish(w: csv::Writer<Vec<u8>>) -> Result<Vec<u8>, std::io::Error> {
    w.into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

pub fn forecast_csv(items: &[Forecast]) -> Result<Vec<u8>, std::io::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "host_id",
        "hostname",
        "resource",
        "unit",
        "status",
        "current",
        "capacity",
        "threshold",
        "threshold_percent",
        "slope_per_day",
        "exhaustion_at",
        "days_to_threshold",
        "confidence",
        "points",
        "incident",
    ])?;
    for f in items {
        w.write_record([
            f.host_id.clone(),
            f.hostname.clone().unwrap_or_default(),
            f.resource.clone(),
            f.unit.clone(),
            status(f.status).to_owned(),
            num(f.current),
            num(f.capacity),
            num(f.threshold),
            num(f.threshold_percent),
            num(f.slope_per_day),
            f.exhaustion_at.map(when).unwrap_or_default(),
            num(f.days_to_threshold),
            f.confidence.to_string(),
            f.points.to_string(),
            f.incident.clone().unwrap_or_default(),
        ])?;
    }
    finish(w)
}

pub fn series_csv(items: &[Series]) -> Result<Vec<u8>, std::io::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "host_id", "hostname", "resource", "unit", "tier", "t", "min", "avg", "max", "p95",
        "samples", "capacity",
    ])?;
    for s in items {
        for p in &s.points {
            w.write_record([
                s.host_id.clone(),
                s.hostname.clone().unwrap_or_default(),
                s.resource.clone(),
                s.unit.clone(),
                s.tier.clone(),
                p.t.clone(),
                p.min.to_string(),
                p.avg.to_string(),
                p.max.to_string(),
                p.p95.to_string(),
                p.samples.to_string(),
                num(s.capacity),
            ])?;
        }
    }
    finish(w)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn forecast() -> Forecast {
        serde_json::from_value(serde_json::json!({
            "host_id": "host-1", "hostname": "web, \"1\"", "resource": "filesystem:/var",
            "unit": "bytes", "status": "at_risk", "current": 65e9, "capacity": 100e9,
            "threshold": 90e9, "threshold_percent": 90.0, "slope_per_day": 3e9,
            "exhaustion_at": "2027-01-01T00:00:00Z", "days_to_threshold": 8.3,
            "confidence": 0.9, "points": 120, "incident": "INC0000001",
            "computed_at": "2026-12-24T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn forecasts_render_as_table_and_csv() {
        let t = forecast_table(&[forecast()], SystemTime::now());
        assert!(t.contains("at_risk"), "{t}");
        assert!(t.contains("60.5 GiB"), "{t}");
        assert!(t.contains("INC0000001"));
        let csv = String::from_utf8(forecast_csv(&[forecast()]).unwrap()).unwrap();
        let mut lines = csv.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("host_id,hostname,resource")
        );
        // The comma and quotes in the hostname are quoted, not split.
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("host-1,\"web, \"\"1\"\"\",filesystem:/var,bytes,at_risk,65000000000,"),
            "{row}"
        );
        assert!(forecast_table(&[], SystemTime::now()).starts_with("no forecasts"));
    }

    #[test]
    fn amounts_use_binary_units() {
        assert_eq!(amount(1536.0, "bytes"), "1.5 KiB");
        assert_eq!(amount(12.0, "bytes_per_second"), "12 B/s");
        assert_eq!(amount(93.25, "percent"), "93.2 %");
        assert_eq!(amount(3.0, "count"), "3.00");
    }
}
