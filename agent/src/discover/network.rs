//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct NetworkCollector;

impl Collector for NetworkCollector {
    fn name(&self) -> &'static str {
        "network_interface"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::NETWORK_INTERFACE]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
