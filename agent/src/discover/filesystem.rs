//! Stub: replaced by the real collector.

use cmdb_proto::model::class;

use super::{Collector, Context, Outcome};

pub struct FilesystemCollector;

impl Collector for FilesystemCollector {
    fn name(&self) -> &'static str {
        "filesystem"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::FILESYSTEM]
    }
    fn collect(&self, _ctx: &Context) -> Outcome {
        Outcome::unsupported("not implemented yet")
    }
}
