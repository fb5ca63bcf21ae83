//! Path prefix → upstream within one site: the longest mount prefix that
//! matches on a segment boundary wins (`/app` matches `/app` and `/app/x`,
//! not `/apple`).
//!
//! A mount is chosen on the path the site's files are looked up by, never
//! on the bytes the client sent: the request path decoded by the one
//! decoder of request paths (`docroot::decode_for`), percent-decoded once
//! and with empty segments collapsed. Else `/%61pi/x` or `//api/x` would
//! miss an app mounted at `/api` and reach the root's static files or PHP,
//! which decode it to `api/x` and serve `ROOT/api/x`, past the app and its
//! access rules (nginx too matches its locations on the normalised URI).
//!
//! - Most paths hold nothing to decode (`docroot::is_plain`: no `%`, no
//!   `//`, no `/.`): they are matched as they are, in one scan, nothing
//!   allocated.
//! - A path with a `.`/`..` segment never gets here: the router refuses it
//!   first, for every upstream (`docroot::dot_segment_verdict`, 403).
//! - A path the decoder refuses otherwise (an encoded slash, not UTF-8, a
//!   NUL byte) has no decoded form: it is matched as sent. No file is ever
//!   served for it (the static and PHP upstreams refuse it with the
//!   decoder's own verdict, 400), and an app mounted where it points gets
//!   it as before, as it gets `%2F` in its paths.
//! - What the upstream receives: the client's path when it starts with the
//!   mount's prefix (then its decoded form does too, a prefix holding no
//!   `%`, `//` or dot segment: `config::types::parse_mount`), so the split
//!   into SCRIPT_NAME and PATH_INFO (Python, `root_path` for ASGI,
//!   X-Forwarded-Prefix for `[app]`) is the one the router made. When it
//!   does not (`/%61pi/x` matched `/api`), the request is forwarded with
//!   the decoded path instead ([`Mounted::forward`], re-encoded by
//!   `docroot::RelPath::to_request_path`, the query kept), as nginx does
//!   with `proxy_pass` and a URI: the app never sees a path that does not
//!   start with the prefix it was told, and the upstreams that decode the
//!   path again (static, PHP) read the same path from it. A root mount
//!   (`""`) matches every path as sent: its requests are never rewritten.

use std::sync::Arc;

use crate::docroot::{self, Reading};
use crate::upstream::Upstream;

/// A site's mounts, longest prefix first. Prefixes have no trailing slash;
/// `""` is the root mount.
#[derive(Clone, Default)]
pub struct MountTable {
    /// Shared strings: each request's context takes its prefix by reference count.
    mounts: Vec<(Arc<str>, Arc<dyn Upstream>)>,
}

/// The mount a request path reached.
pub struct Mounted<'a> {
    pub prefix: &'a Arc<str>,
    pub upstream: &'a Arc<dyn Upstream>,
    /// The path (no query) to forward in place of the client's, which does
    /// not start with `prefix`: the decoded path the mount was chosen on,
    /// encoded again. `None`: the client's path goes on unchanged.
    pub forward: Option<String>,
}

impl MountTable {
    pub fn new(mut mounts: Vec<(String, Arc<dyn Upstream>)>) -> Self {
        mounts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let mounts = mounts.into_iter().map(|(p, u)| (Arc::from(p), u)).collect();
        MountTable { mounts }
    }

    /// The mount for a request path: the raw path of the request target
    /// (`Uri::path`: still percent-encoded, no query), judged as the module
    /// doc says.
    pub fn lookup(&self, raw: &str) -> Option<Mounted<'_>> {
        if docroot::is_plain(raw) {
            return self.find(|prefix| prefix_matches(prefix, raw));
        }
        // Read as a script path: an app's paths may hold dotfiles, and the
        // root's upstreams refuse those themselves.
        let Ok(rel) = docroot::decode_for(raw, Reading::Script) else {
            return self.find(|prefix| prefix_matches(prefix, raw));
        };
        let mut found = self.find(|prefix| decoded_matches(prefix, rel.as_str()))?;
        if !prefix_matches(found.prefix, raw) {
            found.forward = Some(rel.to_request_path());
        }
        Some(found)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Upstream>)> {
        self.mounts.iter().map(|(p, u)| (&**p, u))
    }

    /// The longest mount whose prefix `matches`, to forward the client's path to.
    fn find(&self, matches: impl Fn(&str) -> bool) -> Option<Mounted<'_>> {
        let (prefix, upstream) = self.mounts.iter().find(|(prefix, _)| matches(prefix))?;
        Some(Mounted {
            prefix,
            upstream,
            forward: None,
        })
    }
}

/// `path` starts with `prefix`, then ends or goes on with a `/`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// [`prefix_matches`] for a decoded path without its leading slash (`rel`,
/// `""` for `/`).
fn decoded_matches(prefix: &str, rel: &str) -> bool {
    match prefix.strip_prefix('/') {
        Some(prefix) => prefix_matches(prefix, rel),
        None => prefix.is_empty(),
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

    fn table() -> MountTable {
        MountTable::new(vec![
            (String::new(), Arc::new(Named("root"))),
            ("/app".into(), Arc::new(Named("app"))),
            ("/app/static".into(), Arc::new(Named("static"))),
            ("/api".into(), Arc::new(Named("api"))),
        ])
    }

    /// The mount a request `target` reaches, and the path it is forwarded
    /// with: its path looked up, as the router does (`Uri::path`).
    fn check(t: &MountTable, target: &str, want: (&str, Option<&str>)) {
        let uri: http::Uri = target.parse().unwrap();
        let m = t.lookup(uri.path()).unwrap();
        assert_eq!((m.upstream.kind(), m.forward.as_deref()), want, "{target}");
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let t = table();
        let cases = [
            ("/", "root"),
            ("/apple", "root"),
            ("/app", "app"),
            ("/app/", "app"),
            ("/app/x/y", "app"),
            ("/app/static/a.css", "static"),
            ("/app/staticx", "app"),
            ("/api?x", "api"),
            ("/api/x?y=/z", "api"),
            ("/apix?/api", "root"),
        ];
        for (target, want) in cases {
            check(&t, target, (want, None));
        }
    }

    /// A mount is chosen on the path the files are looked up by: whatever
    /// way it is spelt, `/api/x` reaches `/api`, and a path that does not
    /// start with the prefix as sent goes on decoded.
    #[test]
    fn the_decoded_path_chooses_the_mount() {
        let t = table();
        let cases = [
            ("/%61pi/x", ("api", Some("/api/x"))),
            ("/%61pi", ("api", Some("/api"))),
            ("/%61pi/", ("api", Some("/api/"))),
            ("/%61%70%69/x?q=%61", ("api", Some("/api/x"))),
            ("//api/x", ("api", Some("/api/x"))),
            ("///api//x//", ("api", Some("/api/x/"))),
            ("/app/%73tatic/a.css", ("static", Some("/app/static/a.css"))),
            ("/app//static/a.css", ("static", Some("/app/static/a.css"))),
            // Starting with the prefix as sent: forwarded unchanged.
            ("/api//x", ("api", None)),
            ("/api/%78", ("api", None)),
            ("/api/.env", ("api", None)),
            // Decoded once: `%2561` is the name `%61`, not `a`.
            ("/%2561pi/x", ("root", None)),
            // A decoded `?` is a character of the path, no query.
            ("/api%3Fx", ("root", None)),
            ("/%61pi%3F/x", ("root", None)),
            ("/%61pple", ("root", None)),
            // Re-encoded so that it decodes to the same path once more.
            (
                "/%61pi/%2561%20%3F%23",
                ("api", Some("/api/%2561%20%3F%23")),
            ),
            ("/%61pi/caf%C3%A9", ("api", Some("/api/caf%C3%A9"))),
        ];
        for (target, want) in cases {
            check(&t, target, want);
        }
    }

    /// A path the decoder refuses is matched as sent: the root's upstreams
    /// refuse it themselves (no file is served), an app gets it as before.
    #[test]
    fn a_refused_path_is_matched_as_sent() {
        let t = table();
        let cases = [
            ("/api/./x", "api"),
            ("/api/../x", "api"),
            ("/x/../api/x", "root"),
            ("/./api/x", "root"),
            ("/%2e%2e/api/x", "root"),
            ("/%61pi/%2fx", "root"),
            ("/api/%2fx", "api"),
            ("/%61pi/%ff", "root"),
            ("/app/%2e%2fx", "app"),
        ];
        for (target, want) in cases {
            assert!(
                crate::docroot::decode_for(target, Reading::Script).is_err(),
                "{target} is refused"
            );
            check(&t, target, (want, None));
        }
    }

    fn decoded(path: &str) -> (String, bool) {
        let rel = crate::docroot::decode_for(path, Reading::Script).unwrap();
        (rel.as_str().to_owned(), rel.trailing_slash())
    }

    /// What is forwarded decodes to the path the mount was chosen on, and
    /// then starts with the mount's prefix.
    #[test]
    fn a_forwarded_path_decodes_to_the_path_the_mount_was_chosen_on() {
        let t = table();
        for target in [
            "/%61pi/x",
            "//api/%2561/",
            "/%61pi/a%20b/%C3%A9",
            "//app//static",
        ] {
            let m = t.lookup(target).unwrap();
            let forward = m.forward.unwrap();
            assert_eq!(decoded(&forward), decoded(target), "{target}");
            let again = t.lookup(&forward).unwrap();
            assert_eq!(
                (again.prefix, again.upstream.kind(), again.forward),
                (m.prefix, m.upstream.kind(), None),
                "{target}"
            );
        }
    }
}
