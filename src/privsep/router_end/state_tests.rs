//! The reconcile decisions, one table of cases.

use super::{decide, Decision, HeldSite};
use crate::app::router_link::DesiredSite;

fn held(generation: u64, stopped: bool, usable: bool, same_config: bool) -> Option<HeldSite> {
    Some(HeldSite {
        generation,
        stopped,
        usable,
        same_config,
    })
}

fn want(generation: u64, stopped: bool) -> DesiredSite {
    DesiredSite {
        generation,
        stopped,
        runs_as: None,
        failed: false,
    }
}

#[test]
fn each_site_is_kept_rerouted_stopped_or_built_as_the_supervisor_did() {
    use Decision::*;
    let cases = [
        // (what the router holds, what is wanted, decision, why)
        (None, want(1, false), Build, "new here"),
        (None, want(1, true), Stop, "new here, stopped: no process"),
        (
            held(1, false, true, true),
            want(1, false),
            Keep,
            "unchanged",
        ),
        (
            held(1, false, true, false),
            want(1, false),
            Reroute,
            "same processes, new route",
        ),
        (
            held(1, false, true, true),
            want(2, false),
            Build,
            "new generation",
        ),
        (
            held(1, false, true, false),
            want(2, false),
            Build,
            "new generation and route",
        ),
        (
            held(1, false, true, true),
            want(1, true),
            Stop,
            "stopped by the operator",
        ),
        (
            held(1, true, true, true),
            want(1, true),
            Keep,
            "still stopped",
        ),
        (
            held(1, true, true, false),
            want(1, true),
            Stop,
            "stopped, rerouted",
        ),
        (
            held(1, true, true, true),
            want(2, true),
            Stop,
            "stopped at another generation",
        ),
        (
            held(1, true, true, true),
            want(2, false),
            Build,
            "started by the operator",
        ),
        (
            held(1, true, true, true),
            want(1, false),
            Build,
            "started (same generation)",
        ),
        (
            held(1, false, false, true),
            want(1, false),
            Build,
            "could not be built: again",
        ),
        (
            held(1, false, false, true),
            want(1, true),
            Stop,
            "could not be built, stopped",
        ),
        (
            held(1, false, true, true),
            DesiredSite {
                failed: true,
                ..want(2, false)
            },
            Fail,
            "the supervisor could not build it",
        ),
        (
            None,
            DesiredSite {
                failed: true,
                ..want(1, false)
            },
            Fail,
            "new here, failed",
        ),
    ];
    for (held, want, expected, why) in cases {
        assert_eq!(decide(held, want), expected, "{why}: {held:?} → {want:?}");
    }
}

mod apply {
    use std::path::Path;
    use std::sync::Arc;

    use super::super::RouterState;
    use crate::app::router_link::{Desired, RunsAs};
    use crate::config::Config;
    use crate::docroot::Reader;
    use crate::supervisor::{Attachments, Supervisor};

    /// A configuration with static sites `a` and `b` in `dir`; `a` answers
    /// for `hosts_a`.
    fn config(dir: &Path, hosts_a: &str) -> Config {
        crate::config::tests_support::static_sites(dir, &[("a", hosts_a), ("b", "\"b.test\"")])
    }

    #[tokio::test]
    async fn sites_are_kept_rerouted_stopped_and_dropped_as_desired() {
        let tmp = tempfile::tempdir().unwrap();
        let one = config(tmp.path(), "\"a.test\"");
        let (groups, _requests) = Attachments::new();
        let supervisor = Supervisor::for_router(&one.server, groups);
        let mut state = RouterState::new(supervisor, one.server.log_dir.clone());
        state.apply(&Desired::of_sites(
            1,
            &one,
            &[("a", 1, false), ("b", 1, false)],
        ));
        let a1 = state.site("a").unwrap().clone();
        let b1 = state.site("b").unwrap().clone();
        let table = state.table();
        assert!(Arc::ptr_eq(
            table.vhosts.lookup(Some("a.test")).unwrap(),
            a1.route()
        ));
        assert!(Arc::ptr_eq(
            table.vhosts.lookup(Some("b.test")).unwrap(),
            b1.route()
        ));

        // `a` answers for one more host: a new route over the same generation.
        let two = config(tmp.path(), "\"a.test\", \"www.a.test\"");
        state.apply(&Desired::of_sites(
            2,
            &two,
            &[("a", 1, false), ("b", 1, false)],
        ));
        let a2 = state.site("a").unwrap().clone();
        assert!(a2.shares_runtimes(&a1) && !Arc::ptr_eq(a2.route(), a1.route()));
        assert!(Arc::ptr_eq(a2.stats(), a1.stats()), "counters go on");
        assert!(
            Arc::ptr_eq(state.site("b").unwrap().route(), b1.route()),
            "kept"
        );

        // `b` stopped, `a` removed.
        state.apply(&Desired::of_sites(3, &two, &[("b", 1, true)]));
        assert!(state.site("a").is_none());
        let b3 = state.site("b").unwrap();
        assert!(b3.is_stopped());
        assert!(Arc::ptr_eq(b3.logs(), b1.logs()), "logs go on");

        // Started again: a new generation.
        state.apply(&Desired::of_sites(4, &two, &[("b", 5, false)]));
        let b4 = state.site("b").unwrap();
        assert!(!b4.is_stopped());
        assert_eq!(b4.runtimes().generation, 5);
    }

    #[tokio::test]
    async fn a_site_reads_its_files_as_the_supervisor_resolved_its_user() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config(tmp.path(), "\"a.test\"");
        let (groups, _requests) = Attachments::new();
        let supervisor = Supervisor::for_router(&config.server, groups);
        let mut state = RouterState::new(supervisor, config.server.log_dir.clone());
        let mut want = Desired::of_sites(1, &config, &[("a", 1, false), ("b", 1, false)]);
        want.sites.get_mut("a").unwrap().runs_as = Some(RunsAs {
            uid: 4242,
            gid: 4343,
        });
        state.apply(&want);
        let reader = |name| state.site(name).unwrap().runtimes().reader.clone();
        assert_eq!(reader("a"), Reader::user(4242, &[4343]), "no lookup");
        assert_eq!(reader("b"), Reader::Anyone, "no user");
    }

    #[tokio::test]
    async fn a_site_the_router_cannot_build_is_unavailable_until_it_can() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config(tmp.path(), "\"a.test\"");
        let (groups, _requests) = Attachments::new();
        let supervisor = Supervisor::for_router(&config.server, groups);
        let mut state = RouterState::new(supervisor, config.server.log_dir.clone());
        let www_a = tmp.path().join("www/a");
        std::fs::rename(&www_a, tmp.path().join("elsewhere")).unwrap();
        let want = Desired::of_sites(1, &config, &[("a", 1, false)]);
        state.apply(&want);
        assert!(!state.usable("a"), "its root is gone");
        assert!(
            state.table().vhosts.lookup(Some("a.test")).is_some(),
            "still routed (to a 503)"
        );
        std::fs::rename(tmp.path().join("elsewhere"), &www_a).unwrap();
        state.apply(&want);
        assert!(state.usable("a"), "built at the next Desired");
    }
}
