//! What the node's site directory should hold, decided from the [`View`]
//! (pure but for validation's file-system checks): every site placed on
//! this node whose `sites/NAME` text validates exactly as a vhost file;
//! for one that does not, the version applied before (if any) and the
//! error to report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::view::View;
use crate::config::cluster_site_file;

/// What to apply and what to report as failed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Site name → vhost text: the directory's next content.
    pub files: BTreeMap<String, String>,
    /// The singleton sites among `files`.
    pub singletons: BTreeSet<String>,
    /// Sites placed here → their `sites/NAME` revision (0: no text).
    pub placed: BTreeMap<String, i64>,
    /// Sites placed here that cannot be applied as etcd has them, and why.
    pub failed: BTreeMap<String, String>,
}

/// What the decision depends on besides the view.
pub struct Inputs<'a> {
    pub node: &'a str,
    pub prefix: &'a str,
    /// Relative paths of a site resolve against this (the main file's directory).
    pub base: &'a Path,
    /// Sites of local vhost files (a cluster site must not take their names).
    pub local: &'a BTreeSet<String>,
    /// The directory's content now (the last applied state).
    pub applied: &'a BTreeMap<String, String>,
    /// The singletons among `applied`.
    pub applied_singletons: &'a BTreeSet<String>,
    /// The lease was not renewed for its TTL: singleton sites stop here.
    pub suspend_singletons: bool,
}

/// Validation results by site and revision, so an unchanged text is not
/// validated again on every change elsewhere.
#[derive(Default)]
pub struct Validated(BTreeMap<String, (i64, Option<String>)>);

impl Validated {
    fn error(
        &mut self,
        name: &str,
        text: &str,
        revision: i64,
        inputs: &Inputs<'_>,
    ) -> Option<String> {
        if let Some((rev, error)) = self.0.get(name) {
            if *rev == revision && revision != 0 {
                return error.clone();
            }
        }
        let file = cluster_site_file(inputs.prefix, name);
        let error = crate::config::site_from_text(name, &file, text, inputs.base)
            .err()
            .map(|e| e.to_string());
        self.0.insert(name.to_owned(), (revision, error.clone()));
        error
    }
}

pub fn decide(view: &View, inputs: &Inputs<'_>, validated: &mut Validated) -> Decision {
    if !view.listed {
        return before_listing(inputs);
    }
    let mut d = Decision::default();
    for (name, singleton) in view.placed_on(inputs.node) {
        if singleton && inputs.suspend_singletons {
            continue;
        }
        let site = view.sites.get(name);
        d.placed
            .insert(name.to_owned(), site.map_or(0, |s| s.revision));
        let error = if inputs.local.contains(name) {
            Some(format!(
                "{}: a local vhost file has this site's name; rename one of them",
                cluster_site_file(inputs.prefix, name).display()
            ))
        } else {
            match site {
                None => Some(format!(
                    "placed on this node, but {} has no value",
                    cluster_site_file(inputs.prefix, name).display()
                )),
                Some(s) => validated.error(name, &s.text, s.revision, inputs),
            }
        };
        let text = match (error, site) {
            (None, Some(s)) => Some(s.text.clone()),
            // An invalid text: the version applied before keeps serving.
            (Some(error), Some(_)) => {
                d.failed.insert(name.to_owned(), error);
                inputs
                    .applied
                    .get(name)
                    .cloned()
                    .filter(|_| !inputs.local.contains(name))
            }
            // No text (the site was deleted): it stops here.
            (Some(error), None) => {
                d.failed.insert(name.to_owned(), error);
                None
            }
            (None, None) => None,
        };
        if let Some(text) = text {
            if singleton {
                d.singletons.insert(name.to_owned());
            }
            d.files.insert(name.to_owned(), text);
        }
    }
    d
}

/// Before etcd was ever read: the last applied state, without its
/// singletons once the lease is lost.
fn before_listing(inputs: &Inputs<'_>) -> Decision {
    let keep =
        |name: &String| !(inputs.suspend_singletons && inputs.applied_singletons.contains(name));
    Decision {
        files: inputs
            .applied
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect(),
        singletons: inputs
            .applied_singletons
            .iter()
            .filter(|n| keep(n))
            .cloned()
            .collect(),
        ..Decision::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::node::view::SiteText;
    use crate::cluster::schema::Placement;

    const GOOD: &str = "hosts = [\"a.test\"]\nroot = \"/tmp\"\n";

    fn view(sites: &[(&str, &str, i64)], placements: &[(&str, &str, bool)]) -> View {
        View {
            sites: sites
                .iter()
                .map(|(n, t, r)| {
                    (
                        n.to_string(),
                        SiteText {
                            text: t.to_string(),
                            revision: *r,
                        },
                    )
                })
                .collect(),
            placements: placements
                .iter()
                .map(|(n, node, singleton)| {
                    let p = Placement {
                        node: node.to_string(),
                        draining: vec![],
                        singleton: *singleton,
                    };
                    (n.to_string(), Ok(p))
                })
                .collect(),
            revision: 9,
            listed: true,
        }
    }

    fn run(view: &View, applied: &[(&str, &str)], local: &[&str], suspend: bool) -> Decision {
        let applied: BTreeMap<String, String> = applied
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let local: BTreeSet<String> = local.iter().map(|s| s.to_string()).collect();
        let singles = BTreeSet::from(["solo".to_owned()]);
        let inputs = Inputs {
            node: "web-1",
            prefix: "/ph/",
            base: Path::new("/"),
            local: &local,
            applied: &applied,
            applied_singletons: &singles,
            suspend_singletons: suspend,
        };
        decide(view, &inputs, &mut Validated::default())
    }

    #[test]
    fn placed_valid_sites_are_applied_others_not() {
        let v = view(
            &[("shop", GOOD, 5), ("blog", GOOD, 6)],
            &[("shop", "web-1", false), ("blog", "web-2", false)],
        );
        let d = run(&v, &[], &[], false);
        assert_eq!(d.files.keys().collect::<Vec<_>>(), ["shop"]);
        assert_eq!(d.placed, BTreeMap::from([("shop".to_owned(), 5)]));
        assert!(d.failed.is_empty());
    }

    #[test]
    fn an_invalid_text_keeps_the_applied_version_and_says_why() {
        let v = view(&[("shop", "hosts = 3\n", 7)], &[("shop", "web-1", false)]);
        let d = run(&v, &[("shop", GOOD)], &[], false);
        assert_eq!(d.files.get("shop").map(String::as_str), Some(GOOD));
        let error = &d.failed["shop"];
        assert!(error.starts_with("etcd:/ph/sites/shop: hosts: "), "{error}");
        let d = run(&v, &[], &[], false);
        assert!(d.files.is_empty() && d.failed.contains_key("shop"));
    }

    #[test]
    fn local_names_missing_texts_and_singletons() {
        let v = view(
            &[("shop", GOOD, 5), ("solo", GOOD, 6)],
            &[
                ("shop", "web-1", false),
                ("gone", "web-1", false),
                ("solo", "web-1", true),
            ],
        );
        let d = run(&v, &[("gone", GOOD)], &["shop"], false);
        assert!(d.failed["shop"].contains("a local vhost file"));
        assert!(d.failed["gone"].contains("has no value"));
        assert!(
            !d.files.contains_key("gone"),
            "a deleted site keeps running"
        );
        assert_eq!(d.singletons, BTreeSet::from(["solo".to_owned()]));
        let d = run(&v, &[], &[], true);
        assert_eq!(d.files.keys().collect::<Vec<_>>(), ["shop"]);
    }

    #[test]
    fn before_any_listing_the_applied_state_stays() {
        let v = View::default();
        let d = run(&v, &[("shop", GOOD), ("solo", GOOD)], &[], false);
        assert_eq!(d.files.len(), 2);
        let d = run(&v, &[("shop", GOOD), ("solo", GOOD)], &[], true);
        assert_eq!(d.files.keys().collect::<Vec<_>>(), ["shop"]);
    }
}
