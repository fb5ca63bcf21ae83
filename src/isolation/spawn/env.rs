//! The child's environment, prepared in the parent as `execve`'s `envp`
//! ([`ChildEnv`]), with room for one value only the child knows: its own
//! pid (systemd's `LISTEN_PID`, which a socket-activated program compares
//! with `getpid()` before it takes fd 3).
//!
//! Hand-written rather than std's `Command::env`: std builds `envp` before
//! the fork and installs it after the `pre_exec` closures, so no closure
//! can change an entry. The child instead points `environ` at this array
//! (std leaves `environ` alone when no variable was set through it) and
//! `execvp` passes it on.
//!
//! Invariant: after [`ChildEnv::new`], nothing reallocates: the pointers
//! stay valid while the value lives, moved or not (they point into boxed
//! slices, never into the struct itself).

use std::ffi::{c_char, CString};

/// Room for a pid's decimal digits (a pid is at most 2^22 on Linux; 20
/// digits hold any `u64`).
const PID_DIGITS: usize = 20;

pub(super) struct ChildEnv {
    /// `KEY=VALUE\0` each; the pid entry has `PID_DIGITS + 1` bytes of room.
    entries: Vec<Box<[u8]>>,
    /// Pointers to `entries`, then a null pointer.
    ptrs: Vec<*const c_char>,
    /// The pid entry: its index and where its value starts.
    pid_slot: Option<(usize, usize)>,
}

// SAFETY: the raw pointers point into `entries`, owned by the same value
// and never changed after `new` (see the module's invariant); the value is
// only moved into the `pre_exec` closure and read in the forked child.
unsafe impl Send for ChildEnv {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for ChildEnv {}

impl ChildEnv {
    /// `env` as given (a later duplicate name wins, as with std), plus
    /// `pid_var` (if any) set to the child's pid by [`Self::install`].
    /// `None` when a name or value holds a NUL byte or `=` is in a name.
    pub(super) fn new(env: &[(String, String)], pid_var: Option<&str>) -> Option<ChildEnv> {
        let mut entries: Vec<Box<[u8]>> = Vec::with_capacity(env.len() + 1);
        let mut names: Vec<&str> = Vec::new();
        for (k, v) in env.iter().rev() {
            if names.contains(&k.as_str()) || Some(k.as_str()) == pid_var {
                continue;
            }
            names.push(k);
            let entry = CString::new(format!("{k}={v}")).ok()?;
            if k.is_empty() || k.contains('=') {
                return None;
            }
            entries.push(entry.into_bytes_with_nul().into_boxed_slice());
        }
        entries.reverse();
        let pid_slot = match pid_var {
            Some(name) if name.is_empty() || name.contains(['=', '\0']) => return None,
            Some(name) => {
                let mut entry = format!("{name}=").into_bytes();
                let start = entry.len();
                entry.resize(start + PID_DIGITS + 1, 0);
                entries.push(entry.into_boxed_slice());
                Some((entries.len() - 1, start))
            }
            None => None,
        };
        let mut ptrs: Vec<*const c_char> = entries.iter().map(|e| e.as_ptr().cast()).collect();
        ptrs.push(std::ptr::null());
        Some(ChildEnv {
            entries,
            ptrs,
            pid_slot,
        })
    }

    /// In the child: writes its pid into the pid entry and makes this the
    /// environment `exec` passes on. Async-signal-safe: `getpid`, byte
    /// writes into memory the child owns, one pointer store.
    pub(super) fn install(&mut self) {
        // SAFETY: getpid has no preconditions and cannot fail.
        let pid = unsafe { libc::getpid() };
        self.set_pid(pid as u64);
        // SAFETY: `ptrs` is a null-terminated array of pointers to
        // NUL-terminated strings that live as long as `self`, which the
        // `pre_exec` closure holds until `exec` replaces the process image.
        // The forked child has one thread: nothing reads `environ` meanwhile.
        unsafe {
            environ = self.ptrs.as_ptr();
        }
    }

    /// Writes `pid` into the pid entry, if there is one (no allocation).
    fn set_pid(&mut self, pid: u64) {
        if let Some((index, start)) = self.pid_slot {
            let entry = &mut self.entries[index];
            let len = write_decimal(pid, &mut entry[start..start + PID_DIGITS]);
            entry[start + len] = 0;
        }
    }

    /// The entries as text (tests).
    #[cfg(test)]
    fn rendered(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| {
                let end = e.iter().position(|b| *b == 0).unwrap_or(e.len());
                String::from_utf8_lossy(&e[..end]).into_owned()
            })
            .collect()
    }
}

extern "C" {
    /// The C library's current environment (`environ(7)`), read by `execvp`.
    static mut environ: *const *const c_char;
}

/// Writes `n` in decimal at the start of `out` (no allocation: safe
/// between fork and exec); returns how many bytes it wrote. `out` must have
/// room for `n`'s digits (20 for any `u64`).
pub(super) fn write_decimal(mut n: u64, out: &mut [u8]) -> usize {
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        out[i] = digits[len - 1 - i];
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_duplicates_win_and_the_pid_entry_comes_last() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2".to_owned()),
            ("A".to_owned(), "3".to_owned()),
            ("LISTEN_PID".to_owned(), "forged".to_owned()),
        ];
        let mut child = ChildEnv::new(&env, Some("LISTEN_PID")).unwrap();
        child.set_pid(4_194_304);
        assert_eq!(child.rendered(), ["B=2", "A=3", "LISTEN_PID=4194304"]);
    }

    #[test]
    fn names_with_nul_or_equals_are_refused() {
        assert!(ChildEnv::new(&[("A=B".into(), "1".into())], None).is_none());
        assert!(ChildEnv::new(&[("A".into(), "1\0".into())], None).is_none());
        assert!(ChildEnv::new(&[], Some("")).is_none());
    }

    #[test]
    fn decimals_of_every_width() {
        for n in [0u64, 7, 10, 4_194_304, u64::MAX] {
            let mut out = [0u8; 20];
            let len = write_decimal(n, &mut out);
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), n.to_string());
        }
    }
}
