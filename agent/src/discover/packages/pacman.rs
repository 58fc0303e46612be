//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use crate::discover::{Collector, Context, Outcome};

pub struct PacmanCollector;

impl Collector for PacmanCollector {
    fn name(&self) -> &'static str {
        "pacman"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::PACKAGE]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
