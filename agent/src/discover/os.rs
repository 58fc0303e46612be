//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct OsCollector;

impl Collector for OsCollector {
    fn name(&self) -> &'static str {
        "os"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::OS]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
