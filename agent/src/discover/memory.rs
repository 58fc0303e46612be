//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct MemoryCollector;

impl Collector for MemoryCollector {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::MEMORY]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
