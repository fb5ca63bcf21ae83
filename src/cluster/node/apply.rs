//! Materialising a [`Decision`]: the directory rewritten, then one
//! `Server::reload` (the same reload-as-diff as vhost files). A refused
//! reload leaves the running sites as they were; the directory is put
//! back to the last applied state, the sites the errors name are
//! reported failed and left out, and the rest is tried again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::decide::Decision;
use super::local_dir::LocalDir;
use crate::app::{ControlError, Server};
use crate::config::cluster_site_file;

/// At most this many reloads per change (each leaves out the sites the
/// previous one's errors named).
const ATTEMPTS: usize = 3;

/// The applied state and what applying it did.
pub struct Applier {
    pub dir: LocalDir,
    pub server: Arc<Server>,
    pub prefix: String,
    /// The directory's content: the last applied state.
    pub applied: BTreeMap<String, String>,
    pub applied_singletons: BTreeSet<String>,
    /// Sites a refused reload concerned, and its errors (until their text changes).
    pub refused: BTreeMap<String, (String, String)>,
    /// Sites removed by a reload and the processes they still had.
    pub draining: BTreeMap<String, Vec<i32>>,
    /// Reloads this agent had accepted (the server counts everyone's).
    pub reloads_done: u64,
}

impl Applier {
    /// Applies `d`; `false` once polyhost is shutting down.
    pub async fn apply(&mut self, mut d: Decision) -> bool {
        // A text a reload refused is not tried again until it changes.
        self.refused
            .retain(|name, (text, _)| d.files.get(name) == Some(text));
        for name in self.refused.keys() {
            self.keep_previous(&mut d, name);
        }
        for _ in 0..ATTEMPTS {
            if d.files == self.applied && d.singletons == self.applied_singletons {
                return true;
            }
            if let Err(e) = self.dir.write(&d.files, &d.singletons, &self.applied) {
                tracing::error!(error = %e, "cluster: cannot write the node's site directory; nothing applied");
                // Back to the applied state, against what may be on disk
                // now: every file of `d` (written or not) compared with it.
                let _ = self
                    .dir
                    .write(&self.applied, &self.applied_singletons, &d.files);
                return true;
            }
            let before = self.pids_of_removed(&d).await;
            match self.server.reload().await {
                Ok(_) => {
                    self.reloads_done += 1;
                    self.applied = d.files;
                    self.applied_singletons = d.singletons;
                    self.draining.extend(before);
                    return true;
                }
                Err(e) => {
                    // The running sites are unchanged: so is the directory again.
                    let _ = self
                        .dir
                        .write(&self.applied, &self.applied_singletons, &d.files);
                    if matches!(e, ControlError::ShuttingDown) {
                        return false;
                    }
                    self.refuse(&mut d, &e);
                }
            }
        }
        true
    }

    /// The sites `e` names among those `d` changes (all of them if it names
    /// none: e.g. a local vhost file is invalid) are refused.
    fn refuse(&mut self, d: &mut Decision, e: &ControlError) {
        let text = e.to_string();
        let changed: Vec<String> = d
            .files
            .iter()
            .filter(|(n, t)| self.applied.get(*n) != Some(t))
            .map(|(n, _)| n.clone())
            .collect();
        let named: Vec<String> = changed
            .iter()
            .filter(|n| mentions(&text, &cluster_site_file(&self.prefix, n).to_string_lossy()))
            .cloned()
            .collect();
        let concerned = if named.is_empty() { changed } else { named };
        for name in concerned {
            let file = cluster_site_file(&self.prefix, &name);
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| mentions(l, &file.to_string_lossy()))
                .collect();
            let why = if lines.is_empty() {
                format!("the reload was refused: {text}")
            } else {
                lines.join("\n")
            };
            tracing::warn!(site = %name, error = %why, "cluster: site refused");
            self.refused
                .insert(name.clone(), (d.files[&name].clone(), why));
            self.keep_previous(d, &name);
        }
    }

    fn keep_previous(&self, d: &mut Decision, name: &str) {
        match self.applied.get(name) {
            Some(old) => {
                d.files.insert(name.to_owned(), old.clone());
            }
            None => {
                d.files.remove(name);
                d.singletons.remove(name);
            }
        }
    }

    /// The processes of the sites `d` removes (they drain after the reload).
    async fn pids_of_removed(&self, d: &Decision) -> BTreeMap<String, Vec<i32>> {
        let removed: Vec<&String> = self
            .applied
            .keys()
            .filter(|n| !d.files.contains_key(*n))
            .collect();
        if removed.is_empty() {
            return BTreeMap::new();
        }
        let (status, _) = self.server.status_with_handles().await;
        status
            .sites
            .into_iter()
            .filter(|s| removed.contains(&&s.name))
            .map(|s| (s.name, s.pids))
            .collect()
    }

    /// Forgets removed sites whose processes are all gone; the rest still drain.
    pub fn drained(&mut self) {
        self.draining.retain(|_, pids| {
            pids.iter()
                .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        });
    }
}

/// `text` names `file` as a whole word (not `etcd:/p/sites/shop2` for `shop`).
fn mentions(text: &str, file: &str) -> bool {
    text.match_indices(file).any(|(i, _)| {
        let next = text[i + file.len()..].chars().next();
        next.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mentions_whole_names_only() {
        let text = "etcd:/p/sites/shop2: hosts[0]: a.test is already claimed by etcd:/p/sites/blog";
        assert!(super::mentions(text, "etcd:/p/sites/shop2"));
        assert!(super::mentions(text, "etcd:/p/sites/blog"));
        assert!(!super::mentions(text, "etcd:/p/sites/shop"));
    }
}
