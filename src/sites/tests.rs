//! Unit tests of sites without processes: static sites built by hand over a
//! generation with no groups, and [`TestSites`], a configuration directory
//! the reload plan's tests share.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::{self, SiteName};
use crate::docroot::Reader;
use crate::upstream::UpstreamError;

/// A configuration directory whose vhost files a test rewrites; each load
/// validates them as polyhost does.
pub(crate) struct TestSites(tempfile::TempDir);

impl TestSites {
    pub(crate) fn new() -> TestSites {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("polyhost.toml"),
            "listen = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\nlog_dir = \"log\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        TestSites(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }

    /// The sites of `vhosts` (name, extra lines of its file), each a static
    /// site with its own root, on `<name>.test` unless the extra lines set
    /// `hosts`. Replaces every vhost file written before.
    pub(crate) fn load(&self, vhosts: &[(&str, &str)]) -> BTreeMap<SiteName, Arc<SiteConfig>> {
        let dir = self.path();
        let _ = std::fs::remove_dir_all(dir.join("vhosts"));
        std::fs::create_dir_all(dir.join("vhosts")).unwrap();
        for (name, extra) in vhosts {
            std::fs::create_dir_all(dir.join("www").join(name)).unwrap();
            let hosts = if extra.contains("hosts =") {
                String::new()
            } else {
                format!("hosts = [\"{name}.test\"]\n")
            };
            let file = format!("{hosts}root = \"www/{name}\"\n{extra}\n");
            std::fs::write(dir.join(format!("vhosts/{name}.toml")), file).unwrap();
        }
        config::load(&dir.join("polyhost.toml"))
            .unwrap_or_else(|e| panic!("config errors:\n{e}"))
            .sites
    }

    /// Writes `content` to `rel` under the directory.
    pub(crate) fn write(&self, rel: &str, content: &str) {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// The one site of `vhost`.
    fn one(&self, name: &str, extra: &str) -> Arc<SiteConfig> {
        self.load(&[(name, extra)]).into_values().next().unwrap()
    }

    /// A running static site as `serve` builds it, over a generation with
    /// no process group (what a static site has).
    fn site(&self, config: &Arc<SiteConfig>) -> Site {
        self.static_site(config, None)
    }

    /// Like [`Site::build`] for a static site, without a supervisor: `old`
    /// lends its logs and counters.
    pub(crate) fn static_site(&self, config: &Arc<SiteConfig>, old: Option<&Site>) -> Site {
        let runtimes = Arc::new(Runtimes {
            generation: 7,
            groups: Vec::new(),
            python: None,
            app: None,
            php: None,
            context: None,
            reader: Reader::Anyone,
            python_version: None,
        });
        let (logs, stats) = match old {
            Some(old) => (old.logs().clone(), old.stats().clone()),
            None => (
                open_logs(config, &self.path().join("log")),
                Default::default(),
            ),
        };
        Site::over(
            build_route(config, &runtimes, logs, stats).unwrap(),
            runtimes,
        )
    }
}

/// The kind of upstream `site` serves `path` with.
fn kind_at(site: &Site, path: &str) -> &'static str {
    site.route()
        .mounts
        .lookup(path)
        .map_or("none", |m| m.upstream.kind())
}

#[test]
fn a_static_site_serves_its_root_at_every_path() {
    let dir = TestSites::new();
    let site = dir.site(&dir.one("a", ""));
    assert_eq!(kind_at(&site, "/"), "static");
    assert_eq!(kind_at(&site, "/deep/file.css"), "static");
    assert!(!site.is_stopped());
    assert!(!site.is_running(), "no process group");
}

#[test]
fn rerouting_keeps_processes_logs_and_counters() {
    let dir = TestSites::new();
    let site = dir.site(&dir.one("a", ""));
    let moved = dir.one("a", "hosts = [\"moved.test\"]");
    let next = site.rerouted(&moved).unwrap();
    assert!(next.shares_runtimes(&site));
    assert!(Arc::ptr_eq(next.logs(), site.logs()));
    assert!(Arc::ptr_eq(next.stats(), site.stats()));
    assert!(Arc::ptr_eq(next.config(), &moved));
    assert_eq!(kind_at(&next, "/"), "static");
}

#[test]
fn a_stopped_site_answers_503_and_keeps_its_logs_counters_and_generation() {
    let dir = TestSites::new();
    let site = dir.site(&dir.one("a", ""));
    let stopped = site.stopped(site.config());
    assert!(stopped.is_stopped());
    assert!(!stopped.shares_runtimes(&site), "its processes are stopped");
    assert_eq!(stopped.runtimes().generation, 7);
    assert!(stopped.runtimes().groups.is_empty());
    assert!(Arc::ptr_eq(stopped.logs(), site.logs()));
    assert!(Arc::ptr_eq(stopped.stats(), site.stats()));
    assert_eq!(kind_at(&stopped, "/"), "disabled");
    assert_eq!(kind_at(&stopped, "/any/path"), "disabled");
}

#[test]
fn a_missing_root_is_an_error_of_the_sites_root_key() {
    let dir = TestSites::new();
    let config = dir.one("a", "");
    std::fs::remove_dir_all(dir.path().join("www/a")).unwrap();
    let runtimes = Runtimes {
        generation: 1,
        groups: Vec::new(),
        python: None,
        app: None,
        php: None,
        context: None,
        reader: Reader::Anyone,
        python_version: None,
    };
    let logs = open_logs(&config, &dir.path().join("log"));
    let Err(errors) = build_route(&config, &runtimes, logs, Default::default()) else {
        panic!("a missing root builds no route");
    };
    let errors: Vec<_> = errors.iter().collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "root");
    assert!(errors[0].source.to_string().ends_with("vhosts/a.toml"));
}

#[test]
fn same_runtime_compares_what_processes_see_only() {
    let dir = TestSites::new();
    let base = dir.one("a", "");
    let same = [
        "hosts = [\"other.test\"]",
        "default = true",
        "[static]\ncache_max_age = \"1h\"",
    ];
    for extra in same {
        assert!(same_runtime(&base, &dir.one("a", extra)), "{extra}");
    }
    let different = [
        "[env]\nGREETING = \"hi\"",
        "[limits]\nmemory = \"64M\"",
        "[limits]\nprocesses = 10",
        "[limits]\ncpu = 1.5",
        "sandbox = false",
        "[sandbox]\nnetwork = \"none\"",
        "[sandbox]\npaths = [\"/srv\"]",
    ];
    for extra in different {
        assert!(!same_runtime(&base, &dir.one("a", extra)), "{extra}");
    }
}

#[test]
fn not_ready_names_each_group_and_its_last_error_once() {
    let group = |error: &str, last: Option<&str>| GroupNotReady {
        error: UpstreamError::Unavailable(error.to_owned()),
        last_error: last.map(str::to_owned),
    };
    let not_ready = NotReady {
        groups: vec![
            group("did not start", Some("exit code 1")),
            group("crashed: exit code 2", Some("exit code 2")),
            group("timed out", None),
        ],
    };
    assert_eq!(
        not_ready.to_string(),
        "site unavailable: did not start (last error: exit code 1); \
         site unavailable: crashed: exit code 2; site unavailable: timed out"
    );
}
