//! `cmdbctl impact CI_ID [--depth N]`: the impact set of a CI (what is affected if it
//! fails, what it depends on) as a table, the API's JSON, or CSV.

use std::io::Write;

use clap::Args;
use serde::Deserialize;
use serde_json::Value;

use crate::cli::Format;
use crate::client::Api;
use crate::table::Table;
use crate::{RunError, decode, path_id, print_json};

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct ImpactArgs {
    /// The CI id (`ci-…`).
    pub id: String,
    /// Hops to walk in each direction (1 to 6; the API defaults to 3).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=6))]
    pub depth: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct ImpactView {
    pub root: String,
    pub depth: u32,
    pub nodes: Vec<NodeView>,
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub class: String,
    pub key: String,
    pub host_id: String,
    pub hostname: Option<String>,
    pub direction: String,
    pub hops: u32,
    pub via: String,
}

pub fn run(api: &Api, a: &ImpactArgs, format: Format, out: &mut dyn Write) -> Result<(), RunError> {
    let query: Vec<(&str, String)> = a
        .depth
        .map(|d| ("depth", d.to_string()))
        .into_iter()
        .collect();
    let v: Value = api.get(&format!("/api/v1/cis/{}/impact", path_id(&a.id)?), &query)?;
    if format == Format::Json {
        return print_json(out, &v);
    }
    let view: ImpactView = decode(v)?;
    if format == Format::Csv {
        out.write_all(&csv(&view)?)?;
    } else {
        out.write_all(table(&view).as_bytes())?;
    }
    if view.truncated {
        crate::complain("the impact set was truncated at the node limit; lower --depth");
    }
    Ok(())
}

pub fn table(v: &ImpactView) -> String {
    if v.nodes.is_empty() {
        return format!(
            "Nothing depends on {} within {} hops, and it depends on nothing.\n",
            v.root, v.depth
        );
    }
    let mut t =
        Table::new(&["DIRECTION", "HOPS", "VIA", "CLASS", "KEY", "HOST", "CI"]).max_cell(60);
    for n in &v.nodes {
        t.row([
            n.direction.clone(),
            n.hops.to_string(),
            n.via.clone(),
            n.class.clone(),
            n.key.clone(),
            n.hostname.clone().unwrap_or_else(|| n.host_id.clone()),
            n.id.clone(),
        ]);
    }
    t.render()
}

pub fn csv(v: &ImpactView) -> Result<Vec<u8>, std::io::Error> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record([
        "direction",
        "hops",
        "via",
        "id",
        "class",
        "key",
        "host_id",
        "hostname",
    ])?;
    for n in &v.nodes {
        w.write_record([
            n.direction.clone(),
            n.hops.to_string(),
            n.via.clone(),
            n.id.clone(),
            n.class.clone(),
            n.key.clone(),
            n.host_id.clone(),
            n.hostname.clone().unwrap_or_default(),
        ])?;
    }
    w.into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn view() -> ImpactView {
        serde_json::from_value(serde_json::json!({
            "root": "ci-p", "depth": 3, "truncated": false, "edges": [],
            "nodes": [
                {"id": "ci-x", "class": "process", "key": "postgres", "host_id": "host-b",
                 "hostname": "db-1", "direction": "downstream", "hops": 1, "via": "listens_on"},
                {"id": "ci-a", "class": "host", "key": "host-a", "host_id": "host-a",
                 "hostname": null, "direction": "downstream", "hops": 2, "via": "contains"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn parses_and_renders() {
        let cli = Cli::try_parse_from(["cmdbctl", "impact", "ci-p", "--depth", "2"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Impact(ImpactArgs {
                id: "ci-p".into(),
                depth: Some(2)
            })
        );
        assert!(Cli::try_parse_from(["cmdbctl", "impact", "ci-p", "--depth", "7"]).is_err());
        let t = table(&view());
        assert!(t.contains("downstream"), "{t}");
        assert!(t.contains("db-1") && t.contains("host-a"), "{t}");
        let c = String::from_utf8(csv(&view()).unwrap()).unwrap();
        assert_eq!(
            c.lines().collect::<Vec<_>>(),
            [
                "direction,hops,via,id,class,key,host_id,hostname",
                "downstream,1,listens_on,ci-x,process,postgres,host-b,db-1",
                "downstream,2,contains,ci-a,host,host-a,host-a,",
            ]
        );
    }
}
