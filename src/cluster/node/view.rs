//! [`View`]: what etcd says now about sites and placements, as the node
//! last listed and watched it. Filled by one listing (with its revision),
//! then kept current by watch events from the next revision on; replaced
//! whole by a new listing after every reconnect.

use std::collections::BTreeMap;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchResponse};

use crate::cluster::schema::{Keys, Placement};

/// One `sites/NAME` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteText {
    pub text: String,
    /// The value's `mod_revision`.
    pub revision: i64,
}

/// Sites and placements as etcd has them at [`View::revision`].
#[derive(Clone, Debug, Default)]
pub struct View {
    pub sites: BTreeMap<String, SiteText>,
    /// A placement whose value is not valid JSON holds the parse error:
    /// the site is not run here, and the report says why.
    pub placements: BTreeMap<String, Result<Placement, String>>,
    /// The etcd revision this view reflects.
    pub revision: i64,
    /// A listing succeeded at least once: until then the node knows
    /// nothing and keeps its last applied state as it is.
    pub listed: bool,
}

impl View {
    /// Lists `sites/` and `placement/` (one revision for both: the second
    /// read is pinned to the first's revision).
    pub async fn list(client: &mut Client, keys: &Keys) -> Result<View, etcd_client::Error> {
        let sites = client
            .get(keys.sites(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = sites.header().map_or(0, |h| h.revision());
        let placements = client
            .get(
                keys.placements(),
                Some(GetOptions::new().with_prefix().with_revision(revision)),
            )
            .await?;
        let mut view = View {
            revision,
            listed: true,
            ..View::default()
        };
        for kv in sites.kvs().iter().chain(placements.kvs()) {
            view.put(keys, kv);
        }
        Ok(view)
    }

    /// Applies one watch response; `true` if sites or placements changed.
    pub fn apply(&mut self, keys: &Keys, response: &WatchResponse) -> bool {
        let mut changed = false;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            changed |= match event.event_type() {
                EventType::Put => self.put(keys, kv),
                EventType::Delete => self.delete(keys, kv),
            };
        }
        if let Some(h) = response.header() {
            self.revision = self.revision.max(h.revision());
        }
        changed
    }

    fn put(&mut self, keys: &Keys, kv: &KeyValue) -> bool {
        let Ok(key) = kv.key_str() else { return false };
        let value = String::from_utf8_lossy(kv.value()).into_owned();
        if let Some(name) = keys.name_in(&keys.sites(), key) {
            let text = SiteText {
                text: value,
                revision: kv.mod_revision(),
            };
            self.sites.insert(name.to_owned(), text);
            true
        } else if let Some(name) = keys.name_in(&keys.placements(), key) {
            let placement = serde_json::from_str::<Placement>(&value).map_err(|e| {
                format!("{key}: not a placement ({e}): expected {{\"node\": \"NODE\"}}")
            });
            self.placements.insert(name.to_owned(), placement);
            true
        } else {
            false
        }
    }

    fn delete(&mut self, keys: &Keys, kv: &KeyValue) -> bool {
        let Ok(key) = kv.key_str() else { return false };
        if let Some(name) = keys.name_in(&keys.sites(), key) {
            self.sites.remove(name).is_some()
        } else if let Some(name) = keys.name_in(&keys.placements(), key) {
            self.placements.remove(name).is_some()
        } else {
            false
        }
    }

    /// The sites placed on `node` (as `node` or `draining`), with whether
    /// each is a singleton; broken placements are left out.
    pub fn placed_on<'v>(&'v self, node: &'v str) -> impl Iterator<Item = (&'v str, bool)> + 'v {
        self.placements.iter().filter_map(move |(name, p)| match p {
            Ok(p) if p.runs_on(node) => Some((name.as_str(), p.singleton)),
            _ => None,
        })
    }
}
