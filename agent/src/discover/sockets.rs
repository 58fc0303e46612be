//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct SocketCollector;

impl Collector for SocketCollector {
    fn name(&self) -> &'static str {
        "sockets"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::LISTENING_PORT, class::CONNECTION]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
