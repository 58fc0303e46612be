//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct FileCollector;

impl Collector for FileCollector {
    fn name(&self) -> &'static str {
        "files"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::FILE]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
