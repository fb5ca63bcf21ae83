//! What the control commands answer besides status: a reload's report,
//! the sites it (or `check`) found failing, a refusal. Every text that came
//! from the server goes through [`clean`] (site names and errors may hold
//! what a site wrote).

use std::fmt::Write;

use super::clean;
use crate::admin::api::ErrorBody;
use crate::app::reload::FailedSite;
use crate::app::ReloadReport;

/// The report of an applied reload, one line for stdout.
pub fn reload_report(r: &ReloadReport) -> String {
    let part = |n: &str, sites: &[String]| {
        if sites.is_empty() {
            format!("0 {n}")
        } else {
            format!("{} {n} ({})", sites.len(), clean(&sites.join(", ")))
        }
    };
    format!(
        "reloaded: {}, {}, {}, {}, {} unchanged\n",
        part("added", &r.added),
        part("removed", &r.removed),
        part("restarted", &r.restarted),
        part("rerouted", &r.rerouted),
        r.unchanged
    )
}

/// The sites a reload (or `check`) found failing, for stderr: each error
/// on its own line (`FILE: KEY: MESSAGE`), then what became of the site.
pub fn failed_sites(cmd: &str, failed: &[FailedSite]) -> String {
    let mut out = String::new();
    for f in failed {
        for e in &f.errors {
            let _ = writeln!(out, "{}", clean(e));
        }
        let became = match f.serves_previous {
            true => "it serves its previous configuration",
            false => "it answers 503 until it can be built (mend it, then reload)",
        };
        let _ = writeln!(
            out,
            "polyhost {cmd}: site {} failed: {became}",
            clean(&f.site)
        );
    }
    out
}

/// A refusal for stderr: each configuration error on its own line
/// (`FILE: KEY: MESSAGE`), then what was refused and why.
pub fn refusal(cmd: &str, body: &ErrorBody) -> String {
    let mut out = String::new();
    for e in &body.errors {
        let _ = writeln!(out, "{}", clean(&e.to_string()));
    }
    let _ = writeln!(out, "polyhost {cmd}: refused: {}", clean(&body.error));
    out
}
