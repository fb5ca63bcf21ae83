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
    ];
    for (held, want, expected, why) in cases {
        assert_eq!(decide(held, want), expected, "{why}: {held:?} → {want:?}");
    }
}
