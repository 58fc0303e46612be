//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        "process"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::PROCESS]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
