//! The `licenses` commands' views: each answer becomes a header and rows of cells, shown as
//! an aligned table (cells made terminal-safe and cut) or as CSV (RFC 4180 quoting, cells
//! whole, one header row). `--format json` prints the API's JSON instead.

use cmdb_collector::http::licenses::{
    ExpiringList, ImportResult, Items, PositionList, SoftwareList,
};
use cmdb_collector::licenses::RefreshReport;
use cmdb_collector::licenses::entitlements::Entitlement;
use cmdb_collector::licenses::lists::{ListEntry, Lists};
use cmdb_collector::licenses::normalise::RuleSet;
use cmdb_collector::licenses::position::{DeniedInstall, Unapproved};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::table::Table;

/// Which answer is being shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Position,
    Software,
    Entitlements,
    Rules,
    Lists,
    Expiring,
    Unapproved,
    Denied,
    Refresh,
}

/// Why an answer could not be shown.
#[derive(Debug, thiserror::Error)]
#[error("unexpected answer: {0}")]
pub struct RenderError(String);

fn decode<T: DeserializeOwned>(v: &Value) -> Result<T, RenderError> {
    serde_json::from_value(v.clone()).map_err(|e| RenderError(e.to_string()))
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

/// Header and rows of an answer.
fn cells(view: View, v: &Value) -> Result<(Vec<&'static str>, Vec<Vec<String>>), RenderError> {
    Ok(match view {
        View::Position => {
            let p: PositionList = decode(v)?;
            let rows = p
                .items
                .iter()
                .map(|r| {
                    vec![
                        r.vendor.clone(),
                        r.product.clone(),
                        r.edition.clone(),
                        r.metric.as_str().to_owned(),
                        r.entitled.to_string(),
                        r.consumed.to_string(),
                        r.balance.to_string(),
                        serde_json::to_value(r.status)
                            .ok()
                            .and_then(|s| s.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        r.host_count.to_string(),
                        r.expiring
                            .iter()
                            .map(|e| format!("{} ({})", e.contract, opt(&e.expires)))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                })
                .collect();
            (
                vec![
                    "VENDOR", "PRODUCT", "EDITION", "METRIC", "ENTITLED", "CONSUMED", "BALANCE",
                    "STATUS", "HOSTS", "EXPIRING",
                ],
                rows,
            )
        }
        View::Software => {
            let s: SoftwareList = decode(v)?;
            let rows = s
                .items
                .iter()
                .map(|r| {
                    vec![
                        r.vendor.clone(),
                        r.product.clone(),
                        r.edition.clone(),
                        r.versions.join(" "),
                        r.installs.to_string(),
                        r.hosts.to_string(),
                        r.cores.to_string(),
                        r.users.to_string(),
                        r.licensable.to_string(),
                    ]
                })
                .collect();
            (
                vec![
                    "VENDOR",
                    "PRODUCT",
                    "EDITION",
                    "VERSIONS",
                    "INSTALLS",
                    "HOSTS",
                    "CORES",
                    "USERS",
                    "LICENSABLE",
                ],
                rows,
            )
        }
        View::Entitlements => {
            // An import answers {"imported", "items"}; the list answers {"items"}.
            let items: Vec<Entitlement> = match decode::<ImportResult>(v) {
                Ok(r) => r.items,
                Err(_) => decode::<Items<Entitlement>>(v)?.items,
            };
            let rows = items
                .iter()
                .map(|e| {
                    vec![
                        e.contract.clone(),
                        e.vendor.clone(),
                        e.product.clone(),
                        e.edition.clone(),
                        e.metric.as_str().to_owned(),
                        e.quantity.to_string(),
                        opt(&e.expires),
                        e.notes.clone(),
                    ]
                })
                .collect();
            (
                vec![
                    "CONTRACT", "VENDOR", "PRODUCT", "EDITION", "METRIC", "QUANTITY", "EXPIRES",
                    "NOTES",
                ],
                rows,
            )
        }
        View::Rules => {
            let r: RuleSet = decode(v)?;
            let rows = r
                .rules
                .iter()
                .map(|r| {
                    vec![
                        r.package.clone(),
                        opt(&r.package_vendor),
                        r.vendor.clone(),
                        r.product.clone(),
                        r.edition.clone(),
                        r.licensable.to_string(),
                        r.metric.as_str().to_owned(),
                    ]
                })
                .collect();
            (
                vec![
                    "PACKAGE",
                    "PACKAGE_VENDOR",
                    "VENDOR",
                    "PRODUCT",
                    "EDITION",
                    "LICENSABLE",
                    "METRIC",
                ],
                rows,
            )
        }
        View::Lists => {
            let l: Lists = decode(v)?;
            let row = |list: &str, e: &ListEntry| {
                vec![
                    list.to_owned(),
                    opt(&e.vendor),
                    opt(&e.product),
                    opt(&e.edition),
                    opt(&e.package),
                    e.reason.clone(),
                ]
            };
            let rows = l
                .allow
                .iter()
                .map(|e| row("allow", e))
                .chain(l.deny.iter().map(|e| row("deny", e)))
                .collect();
            (
                vec!["LIST", "VENDOR", "PRODUCT", "EDITION", "PACKAGE", "REASON"],
                rows,
            )
        }
        View::Expiring => {
            let x: ExpiringList = decode(v)?;
            let rows = x
                .items
                .iter()
                .map(|e| {
                    vec![
                        e.entitlement.contract.clone(),
                        e.entitlement.vendor.clone(),
                        e.entitlement.product.clone(),
                        e.entitlement.quantity.to_string(),
                        opt(&e.entitlement.expires),
                        e.days_left.to_string(),
                        e.announced.to_string(),
                    ]
                })
                .collect();
            (
                vec![
                    "CONTRACT",
                    "VENDOR",
                    "PRODUCT",
                    "QUANTITY",
                    "EXPIRES",
                    "DAYS_LEFT",
                    "ANNOUNCED",
                ],
                rows,
            )
        }
        View::Unapproved => {
            let u: Items<Unapproved> = decode(v)?;
            let rows = u
                .items
                .iter()
                .map(|u| {
                    vec![
                        u.vendor.clone(),
                        u.product.clone(),
                        u.edition.clone(),
                        u.packages.iter().cloned().collect::<Vec<_>>().join(" "),
                        u.installs.to_string(),
                        u.hosts.to_string(),
                    ]
                })
                .collect();
            (
                vec![
                    "VENDOR", "PRODUCT", "EDITION", "PACKAGES", "INSTALLS", "HOSTS",
                ],
                rows,
            )
        }
        View::Denied => {
            let d: Items<DeniedInstall> = decode(v)?;
            let rows = d
                .items
                .iter()
                .map(|d| {
                    vec![
                        d.host_id.clone(),
                        d.package_key.clone(),
                        d.vendor.clone(),
                        d.product.clone(),
                        d.reason.clone(),
                        d.ci_id.clone(),
                    ]
                })
                .collect();
            (
                vec!["HOST", "PACKAGE", "VENDOR", "PRODUCT", "REASON", "CI"],
                rows,
            )
        }
        View::Refresh => {
            let r: RefreshReport = decode(v)?;
            (
                vec![
                    "HOSTS",
                    "PACKAGES",
                    "PRODUCTS",
                    "DENIED",
                    "UNAPPROVED",
                    "RAISED",
                    "CLEARED",
                    "ANNOUNCED",
                    "MILLIS",
                ],
                vec![vec![
                    r.hosts.to_string(),
                    r.packages.to_string(),
                    r.products.to_string(),
                    r.denied.to_string(),
                    r.unapproved.to_string(),
                    r.alerts_raised.to_string(),
                    r.alerts_cleared.to_string(),
                    r.expiring_announced.to_string(),
                    r.millis.to_string(),
                ]],
            )
        }
    })
}

/// The answer as a table, or as CSV when `csv`.
pub fn render(view: View, v: &Value, csv: bool) -> Result<String, RenderError> {
    let (headers, rows) = cells(view, v)?;
    if csv {
        let mut w = csv::Writer::from_writer(Vec::new());
        let lower: Vec<String> = headers.iter().map(|h| h.to_lowercase()).collect();
        w.write_record(&lower)
            .map_err(|e| RenderError(e.to_string()))?;
        for r in &rows {
            w.write_record(r).map_err(|e| RenderError(e.to_string()))?;
        }
        let bytes = w.into_inner().map_err(|e| RenderError(e.to_string()))?;
        return String::from_utf8(bytes).map_err(|e| RenderError(e.to_string()));
    }
    let mut t = Table::new(&headers);
    for r in rows {
        t.row(r);
    }
    Ok(t.render())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn position_as_table_and_csv() {
        let v = serde_json::json!({
            "built_at": null, "expiry_window_days": 60,
            "items": [{
                "vendor": "Microsoft", "product": "SQL Server, 2022", "edition": "",
                "metric": "per-core", "entitled": 2, "consumed": 4, "balance": -2,
                "status": "shortfall", "installs": 1, "host_count": 1,
                "hosts": [{"host_id": "host-1", "hostname": "db1", "consumed": 4}],
                "hosts_truncated": false, "entitlements": [], "expired": [],
                "expiring": [{"contract": "EA-1", "quantity": 2, "expires": "2030-01-01"}]
            }]
        });
        let t = render(View::Position, &v, false).unwrap();
        assert!(t.starts_with("VENDOR"));
        assert!(t.contains("shortfall"));
        let c = render(View::Position, &v, true).unwrap();
        let mut lines = c.lines();
        assert_eq!(
            lines.next().unwrap(),
            "vendor,product,edition,metric,entitled,consumed,balance,status,hosts,expiring"
        );
        assert_eq!(
            lines.next().unwrap(),
            "Microsoft,\"SQL Server, 2022\",,per-core,2,4,-2,shortfall,1,EA-1 (2030-01-01)"
        );
    }
}
