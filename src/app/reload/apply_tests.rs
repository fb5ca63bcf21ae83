//! Unit tests of [`prepare`] without processes: static sites, whose new
//! generations a stand-in for [`Builder`] builds by hand (no supervisor).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::app::reload::plan::{plan, Running};
use crate::sites::tests::TestSites;

/// Builds static sites over no process, or fails for the sites named in `fail`.
struct StaticGenerations<'a> {
    dir: &'a TestSites,
    fail: &'a [&'a str],
}

impl Generations for StaticGenerations<'_> {
    fn build(&self, config: &Arc<SiteConfig>, old: Option<&Site>) -> Result<Site, ConfigErrors> {
        if self.fail.contains(&config.name.as_str()) {
            return Err(ConfigErrors(vec![ConfigError::in_file(
                &config.file,
                "user",
                "no such user",
            )]));
        }
        Ok(self.dir.static_site(config, old))
    }
}

/// The running sites of `configs`, those named in `stopped` stopped.
fn running_sites(
    dir: &TestSites,
    configs: &BTreeMap<SiteName, Arc<SiteConfig>>,
    stopped: &[&str],
) -> BTreeMap<SiteName, Site> {
    configs
        .iter()
        .map(|(name, config)| {
            let site = dir.static_site(config, None);
            let site = if stopped.contains(&name.as_str()) {
                site.stopped(config)
            } else {
                site
            };
            (name.clone(), site)
        })
        .collect()
}

fn changes(
    current: &BTreeMap<SiteName, Site>,
    new: &BTreeMap<SiteName, Arc<SiteConfig>>,
) -> Vec<Change> {
    let running: BTreeMap<SiteName, Running> = current
        .iter()
        .map(|(name, site)| (name.clone(), Running::from(site)))
        .collect();
    plan(&running, new)
}

fn name(s: &str) -> SiteName {
    SiteName::parse(s).unwrap()
}

#[tokio::test]
async fn each_change_makes_the_next_site_of_the_running_one() {
    let dir = TestSites::new();
    let env = "[env]\nGREETING = \"hi\"";
    let old = dir.load(&[
        ("kept", ""),
        ("gone", ""),
        ("moved", ""),
        ("env", ""),
        ("off", ""),
    ]);
    let current = running_sites(&dir, &old, &["off"]);
    let new = dir.load(&[
        ("added", ""),
        ("kept", ""),
        ("moved", "hosts = [\"x.test\"]"),
        ("env", env),
        ("off", env),
    ]);
    let generations = StaticGenerations {
        dir: &dir,
        fail: &[],
    };
    let Ok(next) = prepare(&changes(&current, &new), &current, &generations).await else {
        panic!("static sites build");
    };
    let names: Vec<&str> = next.sites.keys().map(SiteName::as_str).collect();
    assert_eq!(names, ["added", "env", "kept", "moved", "off"]);
    let both = |n: &str| (&current[&name(n)], &next.sites[&name(n)]);

    let (o, n) = both("kept");
    assert!(Arc::ptr_eq(o.route(), n.route()), "kept: the same route");
    assert!(n.shares_runtimes(o));

    let (o, n) = both("moved");
    assert!(!Arc::ptr_eq(o.route(), n.route()), "moved: a new route");
    assert!(n.shares_runtimes(o), "moved: the same processes");
    assert_eq!(n.config().hosts[0].to_string(), "x.test");

    let (o, n) = both("env");
    assert!(!n.shares_runtimes(o), "env: a new generation");
    assert!(Arc::ptr_eq(o.logs(), n.logs()) && Arc::ptr_eq(o.stats(), n.stats()));

    let (o, n) = both("off");
    assert!(n.is_stopped(), "a stopped site stays stopped");
    assert_eq!(
        n.config().env.get("GREETING").map(String::as_str),
        Some("hi")
    );
    assert!(Arc::ptr_eq(o.logs(), n.logs()));

    let fresh = |n: &str| {
        next.fresh
            .iter()
            .any(|rt| Arc::ptr_eq(rt, next.sites[&name(n)].runtimes()))
    };
    assert_eq!(next.fresh.len(), 2);
    assert!(fresh("added") && fresh("env"));
}

#[tokio::test]
async fn start_up_builds_every_site_as_a_new_generation() {
    let dir = TestSites::new();
    let config = dir.load(&[("a", ""), ("b", "")]);
    let none = BTreeMap::new();
    let generations = StaticGenerations {
        dir: &dir,
        fail: &[],
    };
    let Ok(next) = prepare(&changes(&none, &config), &none, &generations).await else {
        panic!("static sites build");
    };
    assert_eq!(next.sites.len(), 2);
    assert_eq!(next.fresh.len(), 2);
}

#[tokio::test]
async fn every_site_that_cannot_be_built_is_reported_and_nothing_is_kept() {
    let dir = TestSites::new();
    let old = dir.load(&[("a", ""), ("b", "")]);
    let current = running_sites(&dir, &old, &[]);
    let env = "[env]\nGREETING = \"hi\"";
    let new = dir.load(&[("a", env), ("b", env), ("c", "")]);
    let generations = StaticGenerations {
        dir: &dir,
        fail: &["a", "c"],
    };
    let Err(ApplyError::Setup(errors)) =
        prepare(&changes(&current, &new), &current, &generations).await
    else {
        panic!("two sites fail to build");
    };
    let files: Vec<String> = errors.iter().map(|e| e.source.to_string()).collect();
    assert_eq!(errors.len(), 2, "{files:?}");
    assert!(files[0].ends_with("vhosts/a.toml") && files[1].ends_with("vhosts/c.toml"));
}
