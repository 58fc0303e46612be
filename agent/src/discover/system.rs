//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct SystemCollector;

impl Collector for SystemCollector {
    fn name(&self) -> &'static str {
        "system"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::SYSTEM]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
