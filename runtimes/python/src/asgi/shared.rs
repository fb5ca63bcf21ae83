//! Immutable objects that many scopes carry alike — a header pair such as
//! `(b"host", b"example.org")`, the `path` and `raw_path` of a route, the
//! `server` tuple, the client's address — made once and shared by every
//! scope that has them, instead of new ones per request.
//!
//! Why: an open WebSocket keeps its scope for as long as it lives, so
//! these objects are most of what 10,000 idle WebSockets hold in the
//! worker (a header pair is a tuple of 72 bytes and its value, eight of
//! them a scope); shared, a scope keeps only what is its own (its dicts
//! and lists, the handshake key, the client's port). Only immutable
//! objects (`bytes`, `str`, tuples of them and of ints) are shared, so no
//! app can see another request through them.
//!
//! Invariants: at most [`MAX_ENTRIES`] objects are held (the whole table is
//! dropped when it is full: a stream of unique values costs what it cost
//! before, never memory); a key is at most [`MAX_KEY`] bytes, longer ones
//! are made anew every time; the table is used only with the GIL held
//! (from the loop thread), the lock is never contended.

use std::collections::HashMap;
use std::sync::Mutex;

use pyo3::prelude::*;

/// Objects held at most; then the table starts again empty.
pub const MAX_ENTRIES: usize = 1024;

/// The longest key (kind, lengths and parts) that is shared.
pub const MAX_KEY: usize = 192;

/// What a shared object is: part of its key, so equal bytes of two kinds
/// never meet.
#[derive(Clone, Copy)]
pub enum Kind {
    /// A `(name, value)` header tuple; parts: lowercased name, value.
    Header = 1,
    /// The decoded `path` (`str`); part: the raw path.
    Path,
    /// `raw_path` (`bytes`); part: the raw path.
    RawPath,
    /// The `server` tuple; parts: name, port.
    Server,
    /// The client's address (`str`) in the `client` tuple.
    ClientIp,
}

/// The table: key (kind, then each part after its length) → object.
#[derive(Default)]
pub struct Shared {
    table: Mutex<HashMap<Box<[u8]>, Py<PyAny>>>,
}

/// `kind` and `parts` as one key in `buf`; `None` if it would not fit.
fn key<'b>(buf: &'b mut [u8; MAX_KEY], kind: Kind, parts: &[&[u8]]) -> Option<&'b [u8]> {
    buf[0] = kind as u8;
    let mut at = 1;
    for part in parts {
        let len = u8::try_from(part.len()).ok()?;
        let end = at + 1 + part.len();
        if end > MAX_KEY {
            return None;
        }
        buf[at] = len;
        buf[at + 1..end].copy_from_slice(part);
        at = end;
    }
    Some(&buf[..at])
}

impl Shared {
    /// The shared object for `kind` and `parts`, made by `make` the first
    /// time (and every time for a key longer than [`MAX_KEY`]).
    pub fn get<'py>(
        &self,
        py: Python<'py>,
        kind: Kind,
        parts: &[&[u8]],
        make: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut buf = [0u8; MAX_KEY];
        let Some(key) = key(&mut buf, kind, parts) else {
            return make();
        };
        if let Some(found) = self.lock().get(key) {
            return Ok(found.bind(py).clone());
        }
        let made = make()?;
        let mut table = self.lock();
        if table.len() >= MAX_ENTRIES {
            table.clear();
        }
        table.insert(key.into(), made.clone().unbind());
        Ok(made)
    }

    /// How many objects are held.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Py<PyAny>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_parts_and_kinds_apart() {
        let (mut a, mut b) = ([0u8; MAX_KEY], [0u8; MAX_KEY]);
        // ("ab", "c") and ("a", "bc") are different pairs.
        let one = key(&mut a, Kind::Header, &[b"ab", b"c"]).unwrap().to_vec();
        let two = key(&mut b, Kind::Header, &[b"a", b"bc"]).unwrap().to_vec();
        assert_ne!(one, two);
        let path = key(&mut a, Kind::Path, &[b"/ws"]).unwrap().to_vec();
        let raw = key(&mut b, Kind::RawPath, &[b"/ws"]).unwrap().to_vec();
        assert_ne!(path, raw);
        assert!(key(&mut a, Kind::Path, &[&[b'x'; MAX_KEY]]).is_none());
        assert!(key(&mut a, Kind::Path, &[&[b'x'; 300]]).is_none());
    }

    #[test]
    fn one_object_per_key_and_a_bounded_table() {
        Python::initialize();
        Python::attach(|py| {
            let shared = Shared::default();
            let make = |s: &str| {
                let s = s.to_owned();
                move || Ok(pyo3::types::PyString::new(py, &s).into_any())
            };
            let a = shared.get(py, Kind::Path, &[b"/a"], make("/a")).unwrap();
            let again = shared.get(py, Kind::Path, &[b"/a"], make("other")).unwrap();
            assert!(a.is(&again), "the second lookup made a new object");
            for i in 0..MAX_ENTRIES + 10 {
                let p = format!("/{i}");
                shared
                    .get(py, Kind::Path, &[p.as_bytes()], make(&p))
                    .unwrap();
            }
            assert!(shared.held() <= MAX_ENTRIES, "{} held", shared.held());
            let long = [b'x'; MAX_KEY];
            // (Not a one-character string: CPython keeps one of each.)
            let x = shared.get(py, Kind::Path, &[&long], make("/long")).unwrap();
            let y = shared.get(py, Kind::Path, &[&long], make("/long")).unwrap();
            assert!(!x.is(&y), "a key over MAX_KEY was shared");
        });
    }
}
