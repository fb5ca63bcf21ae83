//! Path prefix → upstream within one site: the longest mount prefix that
//! matches on a segment boundary wins (`/app` matches `/app` and `/app/x`,
//! not `/apple`).

use std::sync::Arc;

use crate::upstream::Upstream;

/// A site's mounts, longest prefix first. Prefixes have no trailing slash;
/// `""` is the root mount.
#[derive(Clone, Default)]
pub struct MountTable {
    /// Shared strings: each request's context takes its prefix by reference count.
    mounts: Vec<(Arc<str>, Arc<dyn Upstream>)>,
}

impl MountTable {
    pub fn new(mut mounts: Vec<(String, Arc<dyn Upstream>)>) -> Self {
        mounts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let mounts = mounts.into_iter().map(|(p, u)| (Arc::from(p), u)).collect();
        MountTable { mounts }
    }

    /// The mount for a request path (the raw URI path).
    pub fn lookup(&self, path: &str) -> Option<(&Arc<str>, &Arc<dyn Upstream>)> {
        self.mounts
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(p, u)| (p, u))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Upstream>)> {
        self.mounts.iter().map(|(p, u)| (&**p, u))
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{RequestBody, RequestContext, ResponseBody, UpstreamError};
    use futures_util::future::BoxFuture;

    struct Named(&'static str);
    impl Upstream for Named {
        fn kind(&self) -> &'static str {
            self.0
        }
        fn handle<'a>(
            &'a self,
            _req: http::Request<RequestBody>,
            _ctx: &'a RequestContext,
        ) -> BoxFuture<'a, Result<http::Response<ResponseBody>, UpstreamError>> {
            Box::pin(async { Err(UpstreamError::NotFound) })
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let t = MountTable::new(vec![
            (String::new(), Arc::new(Named("root"))),
            ("/app".into(), Arc::new(Named("app"))),
            ("/app/static".into(), Arc::new(Named("static"))),
        ]);
        let cases = [
            ("/", "root"),
            ("/apple", "root"),
            ("/app", "app"),
            ("/app/", "app"),
            ("/app/x/y", "app"),
            ("/app/static/a.css", "static"),
            ("/app/staticx", "app"),
        ];
        for (path, want) in cases {
            let (_, u) = t.lookup(path).unwrap();
            assert_eq!(u.kind(), want, "{path}");
        }
    }
}
