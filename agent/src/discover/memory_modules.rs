//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct MemoryModuleCollector;

impl Collector for MemoryModuleCollector {
    fn name(&self) -> &'static str {
        "memory_module"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::MEMORY_MODULE]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
