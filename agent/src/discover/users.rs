//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct UserCollector;

impl Collector for UserCollector {
    fn name(&self) -> &'static str {
        "users"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::USER, class::GROUP]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
