//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct KernelModuleCollector;

impl Collector for KernelModuleCollector {
    fn name(&self) -> &'static str {
        "kernel_modules"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::KERNEL_MODULE]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
