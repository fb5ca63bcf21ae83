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

    fn failed(&self, config: &Arc<SiteConfig>, old: Option<&Site>, why: &ConfigErrors) -> Site {
        let built = self.dir.static_site(config, old);
        Site::failed(config, 9, built.logs().clone(), built.stats().clone(), why)
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
    let next = prepare(&changes(&current, &new), &current, &generations).await;
    assert_eq!(next.failed, []);
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
    let next = prepare(&changes(&none, &config), &none, &generations).await;
    assert_eq!(next.failed, []);
    assert_eq!(next.sites.len(), 2);
    assert_eq!(next.fresh.len(), 2);
}

#[tokio::test]
async fn a_site_that_cannot_be_built_fails_alone() {
    let dir = TestSites::new();
    let old = dir.load(&[("a", ""), ("b", ""), ("d", "")]);
    let mut current = running_sites(&dir, &old, &[]);
    let why = ConfigErrors(vec![ConfigError::in_file(
        &old[&name("d")].file,
        "root",
        "gone",
    )]);
    let failed_d = Site::failed(
        &old[&name("d")],
        3,
        current[&name("d")].logs().clone(),
        Default::default(),
        &why,
    );
    current.insert(name("d"), failed_d);
    let env = "[env]\nGREETING = \"hi\"";
    let new = dir.load(&[("a", env), ("b", env), ("c", ""), ("d", "")]);
    let generations = StaticGenerations {
        dir: &dir,
        fail: &["a", "c", "d"],
    };
    let next = prepare(&changes(&current, &new), &current, &generations).await;

    let failed: Vec<(&str, bool)> = next
        .failed
        .iter()
        .map(|f| (f.site.as_str(), f.serves_previous))
        .collect();
    assert_eq!(failed, [("a", true), ("c", false), ("d", false)]);
    assert!(next.failed[0].errors[0].contains("vhosts/a.toml: user: no such user"));

    let a = &next.sites[&name("a")];
    assert!(
        a.shares_runtimes(&current[&name("a")]),
        "a serves its running processes"
    );
    assert_eq!(
        a.config().env.get("GREETING"),
        None,
        "a keeps its previous configuration"
    );
    assert!(matches!(
        a.trouble(),
        Some(crate::sites::Trouble::NotApplied(_))
    ));
    for failed in ["c", "d"] {
        assert!(next.sites[&name(failed)].is_failed(), "{failed}");
    }
    assert!(Arc::ptr_eq(
        next.sites[&name("d")].logs(),
        current[&name("d")].logs()
    ));
    let b = &next.sites[&name("b")];
    assert_eq!(
        b.config().env.get("GREETING").map(String::as_str),
        Some("hi"),
        "b's change applied"
    );
    assert!(b.trouble().is_none());
    assert_eq!(next.fresh.len(), 1, "only b's new generation");
}
