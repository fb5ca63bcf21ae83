//! Placeholder: replaced by the static-files branch.
use std::path::Path;

use futures_util::future::BoxFuture;

use super::{RequestBody, RequestContext, ResponseBody, Upstream, UpstreamError};
use crate::config::StaticConfig;

pub struct StaticFiles;

impl StaticFiles {
    pub fn new(root: &Path, _cfg: &StaticConfig) -> std::io::Result<Self> {
        std::fs::metadata(root)?;
        Ok(StaticFiles)
    }
}

impl Upstream for StaticFiles {
    fn kind(&self) -> &'static str {
        "static"
    }
    fn handle<'a>(
        &'a self,
        _req: http::Request<RequestBody>,
        _ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<http::Response<ResponseBody>, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::NotFound) })
    }
}
