//! One append-only site log file ([`LogFile`]) and the directory that holds
//! them: buffered writes (written by the shared `super::flusher`), a
//! descriptor held only while lines come, and who may read.
//!
//! Who may read them: logs hold URLs with tokens, client addresses, PHP
//! warnings and Python tracebacks, so no site reads another's. The log
//! directory is root's and not listable (0711); every log file is
//! `0640 root:<group>`, where the group is the one the site's processes run
//! with (a site that runs code reads its own logs through it; no other site
//! that runs code has that group, see `supervisor::separation`) or root's
//! for a static site. Ownership and mode are set on every open, so files an
//! older polyhost made 0644 are tightened. See docs/isolation.md.
//!
//! Privilege-separated (`privsep`), the files are made by the supervisor
//! as above but owned by the router's user instead of root
//! ([`set_log_owner`]), and the router, which may create nothing in the
//! log directory, opens them as they are ([`LogFile::open_existing`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

/// One append-only log file. Its descriptor is held only while lines come:
/// the first line after a quiet period opens the file again (by its path,
/// with the checks, ownership and mode of site setup: [`open_private`],
/// [`set_reader_group`]), and the shared flusher (`super::flusher`) closes
/// it once no line came for `CLOSE_AFTER`. An idle site holds no
/// descriptor, no buffer and no timer for its logs.
pub struct LogFile {
    path: PathBuf,
    /// Made by another process ([`LogFile::open_existing`]): opened as it
    /// is, never created, moved aside or given an owner here.
    existing: bool,
    /// This log, for the flusher's list (a line that activates it).
    me: Weak<LogFile>,
    state: Mutex<State>,
}

/// A log's lines and descriptor, behind its one lock: a line is appended,
/// and written, in the order lines were given, whoever writes.
struct State {
    /// Lines not yet written (at most [`BUFFER`] and one line).
    pending: Vec<u8>,
    /// Held while lines come (see [`LogFile`]).
    file: Option<File>,
    /// The group that may read the file, set again on every open.
    group: Option<u32>,
    /// [`LogFile::closed`]: lines are dropped.
    dead: bool,
    /// In the flusher's list (lines pending or a descriptor held).
    active: bool,
    /// Flusher ticks since the last line.
    quiet_ticks: u32,
    /// The last open failed (warned once until one succeeds).
    failing: bool,
}

/// Lines held in memory before they are written without waiting for the
/// flusher (what the buffered writer held before).
const BUFFER: usize = 64 << 10;

/// Mode of every site log file: the owner (root, or the router's user)
/// writes, the site's group reads.
pub const LOG_FILE_MODE: u32 = 0o640;

/// Who owns (and writes) the site log files this process makes: root, or
/// the router's user when polyhost runs privilege-separated.
static LOG_OWNER: AtomicU32 = AtomicU32::new(0);

/// Makes `uid` the owner of every site log file opened or given to a group
/// from now on (the supervisor of a privilege-separated polyhost, before it
/// opens any: the router's user, which writes them). Root's by default.
pub fn set_log_owner(uid: u32) {
    LOG_OWNER.store(uid, Ordering::SeqCst);
}

fn log_owner() -> u32 {
    LOG_OWNER.load(Ordering::SeqCst)
}

impl LogFile {
    /// Opens (or creates) `path` for appending, as a private file: never
    /// through a symlink, only a regular file with no other hard link, and
    /// made `0640 root:root` (see [`LogFile::give_to_group`]). Anything
    /// else found at `path` (a second hard link, which a site can make where
    /// `fs.protected_hardlinks` is 0; a symlink; a fifo) is moved aside with
    /// a warning ([`move_aside`]) and a new file is made in its place: one
    /// site's log file never keeps polyhost from starting. The descriptor is
    /// not kept: the first line opens the file again the same way.
    pub fn open(path: &Path) -> std::io::Result<Arc<LogFile>> {
        let file = open_private(path)?;
        set_reader_group(&file, None)?;
        drop(file);
        Ok(LogFile::new(path, false, false))
    }

    /// The log file another process made at `path` (the supervisor, for
    /// the router, which may create nothing in the log directory), checked
    /// now and opened like that at each first line: for appending, never
    /// through a symlink, only a regular file with one link; its owner and
    /// mode are left as they are.
    pub fn open_existing(path: &Path) -> std::io::Result<Arc<LogFile>> {
        drop(open_as_is(path)?);
        Ok(LogFile::new(path, false, true))
    }

    /// A log for `path` that could not be opened: its lines are dropped.
    pub fn closed(path: &Path) -> Arc<LogFile> {
        LogFile::new(path, true, false)
    }

    fn new(path: &Path, dead: bool, existing: bool) -> Arc<LogFile> {
        Arc::new_cyclic(|me| LogFile {
            path: path.to_path_buf(),
            existing,
            me: me.clone(),
            state: Mutex::new(State {
                pending: Vec::new(),
                file: None,
                group: None,
                dead,
                active: false,
                quiet_ticks: 0,
                failing: false,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `group` (a site's group) read the file, or only root with `None`:
    /// now (the file is opened for it if its descriptor is not held) and at
    /// every later open.
    pub fn give_to_group(&self, group: Option<u32>) -> std::io::Result<()> {
        let mut state = self.lock();
        if state.dead || self.existing {
            return Ok(());
        }
        state.group = group;
        match &state.file {
            Some(file) => set_reader_group(file, group),
            None => set_reader_group(&open_private(&self.path)?, group),
        }
    }

    /// Appends one line (a newline is added).
    pub fn line(&self, line: &str) {
        self.write_line(|out| out.extend_from_slice(line.as_bytes()));
    }

    /// Appends one line that `write` formats into a per-thread scratch
    /// buffer (no allocation per line); a newline is added. The line goes
    /// to the file in one write, whole.
    pub fn write_line(&self, write: impl FnOnce(&mut Vec<u8>)) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            write(line);
            line.push(b'\n');
            let mut state = self.lock();
            if state.dead {
                return;
            }
            state.pending.extend_from_slice(line);
            state.quiet_ticks = 0;
            if state.pending.len() >= BUFFER {
                write_pending(&self.path, self.existing, &mut state);
            }
            if !state.active {
                state.active = true;
                super::flusher::activate(self.me.clone());
            }
        });
    }

    /// Writes the pending lines now.
    pub fn flush(&self) {
        write_pending(&self.path, self.existing, &mut self.lock());
    }

    /// Writes the pending lines to the file held open, then closes it: the
    /// next line opens the path again (see `super::flusher::reopen_all`).
    pub(super) fn reopen(&self) {
        let mut state = self.lock();
        write_pending(&self.path, self.existing, &mut state);
        state.file = None;
    }

    /// Makes the file at the path again if it is gone (renamed away by log
    /// rotation), with the owner, group and mode of site setup, so that the
    /// process that only opens existing files (the router, privilege-
    /// separated) finds it. Nothing for a log opened as it is.
    pub fn recreate(&self) -> std::io::Result<()> {
        let state = self.lock();
        if state.dead || self.existing {
            return Ok(());
        }
        set_reader_group(&open_private(&self.path)?, state.group)
    }

    /// The flusher's visit: writes the pending lines; after `CLOSE_AFTER`
    /// without a line, closes the descriptor and frees the buffer. False
    /// once the log is quiet and closed (it leaves the flusher's list).
    pub(super) fn tick(&self) -> bool {
        let mut state = self.lock();
        if !state.pending.is_empty() {
            write_pending(&self.path, self.existing, &mut state);
            return true;
        }
        state.quiet_ticks += 1;
        if state.quiet_ticks < super::flusher::CLOSE_TICKS {
            return true;
        }
        state.file = None;
        state.pending = Vec::new();
        state.active = false;
        false
    }

    /// Whether the descriptor is held now.
    #[cfg(test)]
    pub(super) fn is_open(&self) -> bool {
        self.lock().file.is_some()
    }
}

/// Writes `state`'s pending lines to the file at `path`, opened first if
/// its descriptor is not held. A full disk must not take the router down:
/// a write error drops the lines written. A file that cannot be opened
/// keeps its lines for the next try (warned once), up to [`BUFFER`].
fn write_pending(path: &Path, existing: bool, state: &mut State) {
    if state.pending.is_empty() || state.dead {
        return;
    }
    if state.file.is_none() {
        let opened = if existing {
            open_as_is(path)
        } else {
            open_private(path).and_then(|file| {
                set_reader_group(&file, state.group)?;
                Ok(file)
            })
        };
        match opened {
            Ok(file) => {
                state.file = Some(file);
                if std::mem::take(&mut state.failing) {
                    tracing::info!(file = %path.display(), "the site's log file opens again");
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut state.failing, true) {
                    tracing::error!(file = %path.display(), error = %e, "cannot open the site's log file; its lines wait in memory (up to 64 KiB, then dropped) until it opens");
                }
                if state.pending.len() >= BUFFER {
                    state.pending.clear();
                }
                return;
            }
        }
    }
    if let Some(file) = state.file.as_mut() {
        let _ = file.write_all(&state.pending);
    }
    state.pending.clear();
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let existing = self.existing;
        if let Ok(state) = self.state.get_mut() {
            write_pending(&self.path, existing, state);
        }
    }
}

/// Opens the log file at `path` as another process made it, for appending:
/// never through a symlink (`O_NONBLOCK`: nor blocking on a fifo), only a
/// regular file with one link.
fn open_as_is(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file with one link",
            path.display()
        )));
    }
    Ok(file)
}

/// `0640`, owned by root (or the router's user, [`set_log_owner`]) when
/// polyhost is root, and by `group` (root's without one).
fn set_reader_group(file: &File, group: Option<u32>) -> std::io::Result<()> {
    set_owners(file, log_owner(), group)
}

/// `0640`, owned by `owner` and `group` (root's without one) when polyhost
/// is root.
fn set_owners(file: &File, owner: u32, group: Option<u32>) -> std::io::Result<()> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        std::os::unix::fs::fchown(file, Some(owner), Some(group.unwrap_or(0)))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(LOG_FILE_MODE))
}

/// Opens the log file at `path` for appending: the regular file with one
/// link found there, or a new one (`O_EXCL`) once whatever else was there has
/// been moved aside. Never through a symlink; `O_NONBLOCK` so that a fifo
/// swapped in cannot block the open. The log directory is root's and
/// writable by root alone (`prepare_log_dir`), so nothing but a hard link
/// made from outside changes it between the look and the open; the loop
/// looks again if something did.
fn open_private(path: &Path) -> std::io::Result<File> {
    use std::io::ErrorKind;
    for _ in 0..3 {
        let found = match std::fs::symlink_metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let reuse = match &found {
            Some(meta) if meta.is_file() && meta.nlink() == 1 => true,
            Some(meta) => {
                move_aside(path, meta)?;
                false
            }
            None => false,
        };
        let opened = OpenOptions::new()
            .append(true)
            .create_new(!reuse)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        match opened {
            Ok(file) => {
                let meta = file.metadata()?;
                if meta.is_file() && meta.nlink() == 1 {
                    return Ok(file);
                }
            }
            // Changed between the look and the open: look again.
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::AlreadyExists)
                    || e.raw_os_error() == Some(libc::ELOOP) => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "{} keeps changing while polyhost opens it",
        path.display()
    )))
}

/// Renames what is at `path` (not a regular file with one link) to
/// `<name>.moved-<unix time>` beside it, with a warning naming both. A
/// regular file keeps its content for the operator but loses the site's
/// group (root's from then on, as `retire_other_logs` does): that name is
/// no site's log any more, and a group id given to a later site must not
/// open it. The other links (e.g. a site's `ln .../other.error.log /tmp/x`)
/// keep naming the old file, which polyhost never writes again.
fn move_aside(path: &Path, found: &std::fs::Metadata) -> std::io::Result<()> {
    let what = if found.file_type().is_symlink() {
        "is a symlink".to_owned()
    } else if !found.is_file() {
        "is not a regular file".to_owned()
    } else {
        format!("has {} hard links", found.nlink())
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = (0..100)
        .map(|n| match n {
            0 => path.with_file_name(format!("{name}.moved-{stamp}")),
            n => path.with_file_name(format!("{name}.moved-{stamp}-{n}")),
        })
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "{} {what}, and no free name beside it to move it to",
                path.display()
            ))
        })?;
    // No site writes in the log directory, so the name found free stays free.
    std::fs::rename(path, &aside)?;
    let ours = found.uid() == 0 || found.uid() == log_owner();
    if found.is_file() && ours && found.gid() != 0 {
        let retired = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&aside)
            .and_then(|f| {
                let meta = f.metadata()?;
                if (meta.dev(), meta.ino()) == (found.dev(), found.ino()) {
                    std::os::unix::fs::fchown(&f, None, Some(0))?;
                }
                Ok(())
            });
        if let Err(e) = retired {
            tracing::warn!(file = %aside.display(), error = %e, "cannot give a moved-aside log file back to root");
        }
    }
    tracing::warn!(
        file = %path.display(),
        moved_to = %aside.display(),
        "a site log file {what} (a second link may come from site code where fs.protected_hardlinks is 0); moved it aside and started a new file"
    );
    Ok(())
}

/// Creates the log directory (`0711 root`: sites reach their own files by
/// name, list nothing) or checks an existing one: it must be root's (or
/// polyhost's) and writable by nobody else, or a site could plant files in
/// it; an existing directory loses its read permission for others.
pub fn prepare_log_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)?;
            // The mode given to mkdir is masked by the umask.
            return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711));
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    // An existing path is followed: /var/log/polyhost may be a symlink the
    // operator made; what it points at is checked.
    let meta = std::fs::metadata(dir)?;
    let mode = meta.mode() & 0o7777;
    let euid = nix::unistd::geteuid().as_raw();
    let refuse = |why: String| {
        Err(std::io::Error::other(format!(
            "{why}; site code could plant files there: make it root's and writable by root only (chown root:root, chmod 0711)"
        )))
    };
    if !meta.is_dir() {
        return refuse("not a directory".into());
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return refuse(format!("owned by uid {}", meta.uid()));
    }
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0) {
        return refuse(format!("writable by other users (mode {mode:04o})"));
    }
    if mode & 0o004 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o004))?;
    }
    Ok(())
}

/// Log files in `dir` of sites other than `sites` (removed while polyhost
/// was stopped) go back to root (`0640 root:root`, also from the router's user): a group id freed with a
/// removed site's user and given to a new site's must not open the old
/// site's logs. Best effort: a file that cannot be changed is logged.
pub fn retire_other_logs(dir: &Path, sites: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(site) = name
            .strip_suffix(".access.log")
            .or_else(|| name.strip_suffix(".error.log"))
        else {
            continue;
        };
        if sites.contains(&site) {
            continue;
        }
        let retired = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(entry.path())
            .and_then(|f| {
                if f.metadata()?.is_file() {
                    set_owners(&f, 0, None)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = retired {
            tracing::warn!(file = %entry.path().display(), error = %e, "cannot give a removed site's log back to root");
        }
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
