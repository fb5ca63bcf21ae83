//! Unit tests of [`plan`] and [`ReloadReport::of`]: sites written as vhost
//! files in a temporary directory ([`TestSites`]) and loaded as polyhost
//! loads them; no process runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::config::{SiteConfig, SiteName};
use crate::sites::tests::TestSites;

/// The running sites `sites`, those named in `stopped` stopped by the operator.
fn running<'a>(
    sites: &'a BTreeMap<SiteName, Arc<SiteConfig>>,
    stopped: &[&str],
) -> BTreeMap<SiteName, Running<'a>> {
    running_or_failed(sites, stopped, &[])
}

/// [`running`], those named in `failed` failed (could not be built).
fn running_or_failed<'a>(
    sites: &'a BTreeMap<SiteName, Arc<SiteConfig>>,
    stopped: &[&str],
    failed: &[&str],
) -> BTreeMap<SiteName, Running<'a>> {
    sites
        .iter()
        .map(|(name, config)| {
            let running = Running {
                config,
                stopped: stopped.contains(&name.as_str()),
                failed: failed.contains(&name.as_str()),
            };
            (name.clone(), running)
        })
        .collect()
}

/// Each change as `(kind, site)`, in plan order.
fn summary(changes: &[Change]) -> Vec<(&'static str, String)> {
    changes
        .iter()
        .map(|c| {
            let kind = match c {
                Change::Keep(_) => "keep",
                Change::Add(_) => "add",
                Change::Restart(_) => "restart",
                Change::Reroute(_) => "reroute",
                Change::Remove(_) => "remove",
            };
            (kind, c.site().to_string())
        })
        .collect()
}

/// Plans from `old` (with `stopped`) to `new` and checks the summary.
fn check(old: &[(&str, &str)], stopped: &[&str], new: &[(&str, &str)], want: &[(&str, &str)]) {
    let dir = TestSites::new();
    let old = dir.load(old);
    let new = dir.load(new);
    let changes = plan(&running(&old, stopped), &new);
    let want: Vec<(&str, String)> = want.iter().map(|(k, s)| (*k, s.to_string())).collect();
    assert_eq!(summary(&changes), want);
}

#[test]
fn start_up_adds_every_site() {
    check(
        &[],
        &[],
        &[("a", ""), ("b", "")],
        &[("add", "a"), ("add", "b")],
    );
}

#[test]
fn nothing_configured_and_nothing_running_is_an_empty_plan() {
    check(&[], &[], &[], &[]);
}

#[test]
fn a_site_gone_from_the_configuration_is_removed() {
    check(
        &[("a", ""), ("b", "")],
        &[],
        &[("b", "")],
        &[("remove", "a"), ("keep", "b")],
    );
}

#[test]
fn an_identical_site_is_kept() {
    check(&[("a", "")], &[], &[("a", "")], &[("keep", "a")]);
}

#[test]
fn routing_changes_reroute_over_the_same_processes() {
    for extra in [
        "hosts = [\"a.test\", \"www.a.test\"]",
        "[static]\ncache_max_age = \"1h\"",
    ] {
        check(&[("a", "")], &[], &[("a", extra)], &[("reroute", "a")]);
    }
}

#[test]
fn runtime_changes_restart_the_site() {
    for extra in ["[env]\nGREETING = \"hi\"", "[limits]\nmemory = \"64M\""] {
        check(&[("a", "")], &[], &[("a", extra)], &[("restart", "a")]);
    }
}

#[test]
fn a_stopped_site_stays_stopped_and_is_only_rerouted() {
    let env = "[env]\nGREETING = \"hi\"";
    check(&[("a", "")], &["a"], &[("a", env)], &[("reroute", "a")]);
    check(&[("a", "")], &["a"], &[("a", "")], &[("keep", "a")]);
}

#[test]
fn a_failed_site_is_built_again_even_unchanged() {
    let dir = TestSites::new();
    let sites = dir.load(&[("a", ""), ("b", "")]);
    let changes = plan(&running_or_failed(&sites, &[], &["a"]), &sites);
    let want = [("restart", "a".to_owned()), ("keep", "b".to_owned())];
    assert_eq!(summary(&changes), want);
}

#[test]
fn every_kind_of_change_at_once_in_name_order() {
    let env = "[env]\nGREETING = \"hi\"";
    let hosts = "hosts = [\"other.test\"]";
    check(
        &[
            ("b-kept", ""),
            ("c-gone", ""),
            ("d-moved", ""),
            ("e-new-env", ""),
            ("f-stopped", ""),
        ],
        &["f-stopped"],
        &[
            ("a-new", ""),
            ("b-kept", ""),
            ("d-moved", hosts),
            ("e-new-env", env),
            ("f-stopped", env),
        ],
        &[
            ("add", "a-new"),
            ("keep", "b-kept"),
            ("remove", "c-gone"),
            ("reroute", "d-moved"),
            ("restart", "e-new-env"),
            ("reroute", "f-stopped"),
        ],
    );
}

#[test]
fn a_renewed_certificate_reroutes_the_site() {
    let dir = TestSites::new();
    let tls = "[tls]\ncert = \"certs/a.pem\"\nkey = \"certs/a.key\"";
    let write_cert = || {
        let c = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
        dir.write("certs/a.pem", &c.cert.pem());
        dir.write("certs/a.key", &c.signing_key.serialize_pem());
    };
    write_cert();
    let old = dir.load(&[("a", tls)]);
    let same = dir.load(&[("a", tls)]);
    assert_eq!(
        summary(&plan(&running(&old, &[]), &same)),
        [("keep", "a".into())]
    );
    write_cert();
    let renewed = dir.load(&[("a", tls)]);
    assert_eq!(
        summary(&plan(&running(&old, &[]), &renewed)),
        [("reroute", "a".into())],
        "same paths, new certificate"
    );
}

#[test]
fn the_report_counts_each_kind() {
    let dir = TestSites::new();
    let env = "[env]\nGREETING = \"hi\"";
    let old = dir.load(&[("kept", ""), ("gone", ""), ("moved", ""), ("env", "")]);
    let new = dir.load(&[
        ("added", ""),
        ("kept", ""),
        ("moved", "hosts = [\"x.test\"]"),
        ("env", env),
    ]);
    let report = ReloadReport::of(&plan(&running(&old, &[]), &new));
    assert_eq!(
        report,
        ReloadReport {
            added: vec!["added".into()],
            removed: vec!["gone".into()],
            restarted: vec!["env".into()],
            rerouted: vec!["moved".into()],
            unchanged: 1,
            warnings: vec![],
            failed: vec![],
        }
    );
}
