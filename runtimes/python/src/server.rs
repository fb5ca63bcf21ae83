//! The serving loop: one epoll set shared by the `--threads` Python threads,
//! the listening socket, the table of connections, and the graceful stop.
//!
//! Each thread waits in `epoll_wait(maxevents = 1)` with the GIL released;
//! the kernel wakes one waiter per event (most recent waiter first), so the
//! thread woken for a connection reads the request and serves it itself: no
//! hand-off between threads. Connections are registered edge-triggered
//! (`EPOLLET`) and stay registered while a thread serves them: re-arming a
//! one-shot registration after every request was an `epoll_ctl` per request,
//! a fifth of the worker's time under a hello-world load. The table says who
//! owns a connection; an event for a connection a thread already owns only
//! marks it `pending`, and the owner reads again before it lets go.
//!
//! Invariants:
//! - A connection is in the table, either idle or owned by exactly one
//!   thread (owned ones counted in `busy`); only its owner reads its head,
//!   and an idle one is taken under the table lock, so one event never
//!   gives it two owners.
//! - No request is left unread in an idle connection: its owner lets go
//!   only after a read found the socket empty (`EAGAIN`) and no event came
//!   since (`pending`), under the table lock; data arriving later raises a
//!   new edge, which finds the connection idle.
//! - While a request body is still arriving, the connection is registered
//!   for no events (`quiet`), so each chunk does not wake a listening
//!   thread; letting go re-registers it, and the kernel reports at once
//!   what arrived meanwhile.
//! - More connections than threads are fine: a request waits unread in its
//!   socket until a thread is free, and an idle connection holds no thread.
//! - Stopping: accepting stops and the socket file goes first, idle
//!   connections are closed, connections in use close after their response;
//!   [`Server::stop`] returns once none is in use, or at the deadline.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{sockopt, UnixAddr};
use pyo3::prelude::*;

use crate::conn::{Conn, HeadRead, ReadBuf, Stream};
use crate::errors::StartError;
use crate::pacer::Pacer;
use crate::request::{self, AppContext, Done, Exchange, Finish};

/// The listener's epoll token; connections count from 1.
const LISTENER: u64 = 0;
/// How much of an unread request body is read and thrown away after the
/// response; past this the connection is closed instead.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// A list body larger than this is written before the thread waits for the
/// next request, so an idle thread never keeps a big response alive.
const HOLD_LIMIT: usize = 1 << 20;
/// writev takes at most IOV_MAX (1024) pieces; a body in more is joined.
const MAX_PIECES: usize = 64;

/// A connection waiting for its next request: every arrival is an edge.
fn conn_events() -> EpollFlags {
    EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET
}

/// A connection whose body is arriving: no events (errors and hang-ups
/// are always reported; they only mark it pending).
fn quiet_events() -> EpollFlags {
    EpollFlags::EPOLLET
}

/// A bound listening socket and the identity of its file (to remove only
/// ours; `None` for an inherited socket, whose file is its owner's).
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    ino: Option<(u64, u64)>,
}

/// Listens on the inherited, bound Unix stream socket `fd` (non-blocking,
/// close-on-exec: the app's own child processes do not inherit it).
pub fn listen_inherited(fd: RawFd) -> Result<Listener, StartError> {
    let err = |source| StartError::Listen {
        path: format!("inherited descriptor {fd}"),
        source,
    };
    // Only a descriptor that is open may be owned: check before taking it.
    #[allow(unsafe_code)] // fcntl(2) on a plain integer.
    // SAFETY: F_GETFD reads the descriptor flags; an fd that is not open
    // gives EBADF and nothing else happens.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    if fd < 3 || !open {
        return Err(err(io::Error::from_raw_os_error(libc::EBADF)));
    }
    #[allow(unsafe_code)] // taking ownership of the inherited descriptor.
    // SAFETY: `fd` is open (checked above) and was handed to this process for
    // this use alone (`--socket-fd`); nothing else in the worker owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let is_unix_stream = nix::sys::socket::getsockopt(&owned, sockopt::SockType)
        .is_ok_and(|t| t == nix::sys::socket::SockType::Stream)
        && nix::sys::socket::getsockname::<UnixAddr>(owned.as_raw_fd()).is_ok();
    if !is_unix_stream {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a Unix stream socket",
        )));
    }
    let path = nix::sys::socket::getsockname::<UnixAddr>(owned.as_raw_fd())
        .ok()
        .and_then(|a| a.path().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(format!("fd {fd}")));
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| err(e.into()))?;
    nix::sys::socket::listen(&owned, nix::sys::socket::Backlog::MAXALLOWABLE)
        .map_err(|e| err(e.into()))?;
    let listener = UnixListener::from(owned);
    listener.set_nonblocking(true).map_err(err)?;
    Ok(Listener {
        listener,
        path,
        ino: None,
    })
}

/// Removes a stale socket at `path` and binds a new one (non-blocking).
pub fn bind(path: &Path) -> Result<Listener, StartError> {
    let err = |source| StartError::Listen {
        path: path.display().to_string(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; remove it",
            )))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let ino = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    Ok(Listener {
        listener,
        path: path.to_owned(),
        ino,
    })
}

impl Listener {
    /// The listening socket's descriptor (it stays owned by the listener).
    pub fn raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Removes the socket file if it is still the one this listener bound.
    pub fn remove_file(&self) {
        let ours = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.ino {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Tokens are sequential and never reused; this spreads them for the table.
#[derive(Default)]
struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// A connection as the table knows it.
enum Slot {
    /// Between requests: the next event's thread takes it.
    Idle(Conn),
    /// A thread serves it; `pending`: an event came meanwhile.
    Owned { pending: bool },
}

struct Table {
    conns: HashMap<u64, Slot, BuildHasherDefault<TokenHasher>>,
    next_token: u64,
    /// Connections owned by a thread.
    busy: usize,
}

/// The shared state of the serving threads. Lives for the whole process.
pub struct Server {
    epoll: Epoll,
    listener: Mutex<Option<Listener>>,
    table: Mutex<Table>,
    drained: Condvar,
    stopping: AtomicBool,
    pacer: Pacer,
}

/// A connection owned by a thread; dropping it counts the connection as
/// no longer in use.
pub struct InFlight(&'static Server);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut t = self.0.lock();
        t.busy -= 1;
        if t.busy == 0 && self.0.stopping() {
            self.0.drained.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// Starts serving `listener` on `threads` Python threads.
    pub fn start(
        listener: Listener,
        threads: usize,
        ctx: AppContext,
    ) -> io::Result<&'static Server> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            &listener.listener,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, LISTENER),
        )?;
        let server: &'static Server = Box::leak(Box::new(Server {
            epoll,
            listener: Mutex::new(Some(listener)),
            table: Mutex::new(Table {
                conns: HashMap::default(),
                next_token: LISTENER + 1,
                busy: 0,
            }),
            drained: Condvar::new(),
            stopping: AtomicBool::new(false),
            pacer: Pacer::new(threads),
        }));
        std::thread::Builder::new()
            .name("polyhost-pacer".into())
            .spawn(move || server.pacer.watch())?;
        let ctx = Arc::new(ctx);
        for i in 0..threads {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name(format!("python-{i}"))
                .spawn(move || server.thread_main(&ctx))?;
        }
        Ok(server)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A serving thread: attached to the interpreter for good, detached
    /// while it waits and while it writes.
    fn thread_main(&'static self, ctx: &AppContext) {
        Python::attach(|py| {
            let mut done: Option<(Done<'_>, InFlight)> = None;
            loop {
                let (ex, busy) = match done.take() {
                    None => py.detach(|| self.next_exchange(None)),
                    Some((Done { finish, items }, busy)) => {
                        let slices: Vec<&[u8]> = items.iter().map(|b| b.as_bytes()).collect();
                        if finish.body_len > HOLD_LIMIT {
                            let again = py.detach(|| self.complete(finish, busy, &slices));
                            drop(slices);
                            drop(items);
                            py.detach(|| self.next_exchange(again))
                        } else {
                            // One release of the GIL for the write and the wait.
                            let ex = py.detach(|| {
                                let again = self.complete(finish, busy, &slices);
                                self.next_exchange(again)
                            });
                            drop(slices);
                            drop(items);
                            ex
                        }
                    }
                };
                let stopping = self.stopping();
                // A bug in our own request code must not take a serving thread
                // down; the connection is dropped (closed) with the panic.
                match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    request::run(py, ctx, ex, stopping)
                })) {
                    Ok(d) => done = Some((d, busy)),
                    Err(_) => {
                        drop(busy);
                        eprintln!(
                            "polyhost-python: internal error while serving a request (see above)"
                        )
                    }
                }
            }
        })
    }

    /// Waits for the next request (or serves `again`'s buffered one first).
    fn next_exchange(&'static self, mut again: Option<(Conn, InFlight)>) -> (Exchange, InFlight) {
        let mut events = [EpollEvent::empty()];
        loop {
            let (mut conn, busy) = match again.take() {
                Some(owned) => owned,
                None => {
                    self.pacer.start_listening();
                    let waited = self.epoll.wait(&mut events, EpollTimeout::NONE);
                    self.pacer.stop_listening();
                    match waited {
                        Ok(1) => {}
                        Ok(_) | Err(Errno::EINTR) => continue,
                        Err(e) => {
                            eprintln!("polyhost-python: epoll_wait failed: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                    let token = events[0].data();
                    if token == LISTENER {
                        self.accept();
                        continue;
                    }
                    match self.take(token) {
                        Some(owned) => owned,
                        None => continue,
                    }
                }
            };
            match conn.read_head() {
                HeadRead::Ready(head) => {
                    if !head.body_buffered(conn.buf.len()) {
                        self.quiet(&mut conn);
                    }
                    return (Exchange { conn, head }, busy);
                }
                HeadRead::Again => again = self.park(conn, busy),
                HeadRead::Closed => self.close(conn, busy),
                HeadRead::Reject(r) => {
                    conn.reject(r);
                    self.close(conn, busy);
                }
            }
        }
    }

    /// Accepts every pending connection, then re-arms the listener.
    fn accept(&'static self) {
        let guard = lock(&self.listener);
        let Some(l) = guard.as_ref() else {
            return; // stopping
        };
        loop {
            match l.listener.accept() {
                Ok((sock, _)) => match Stream::new(sock) {
                    Ok(stream) => self.register(stream),
                    Err(e) => eprintln!("polyhost-python: cannot set up a connection: {e}"),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("polyhost-python: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
        let mut ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, LISTENER);
        if let Err(e) = self.epoll.modify(&l.listener, &mut ev) {
            eprintln!("polyhost-python: cannot re-arm the listener: {e}");
        }
    }

    fn register(&'static self, stream: Arc<Stream>) {
        let mut t = self.lock();
        if self.stopping() {
            return;
        }
        let token = t.next_token;
        t.next_token += 1;
        let ev = EpollEvent::new(conn_events(), token);
        if let Err(e) = self.epoll.add(&stream.sock, ev) {
            eprintln!("polyhost-python: cannot watch a connection: {e}");
            return;
        }
        t.conns.insert(
            token,
            Slot::Idle(Conn {
                token,
                stream,
                buf: ReadBuf::default(),
                quiet: false,
            }),
        );
    }

    /// Takes an idle connection whose socket became readable; marks one
    /// that a thread owns as pending.
    fn take(&'static self, token: u64) -> Option<(Conn, InFlight)> {
        let mut t = self.lock();
        let slot = t.conns.get_mut(&token)?;
        match std::mem::replace(slot, Slot::Owned { pending: false }) {
            Slot::Idle(conn) => {
                t.busy += 1;
                Some((conn, InFlight(self)))
            }
            Slot::Owned { .. } => {
                *slot = Slot::Owned { pending: true };
                None
            }
        }
    }

    /// Stops events for a connection whose request body is still arriving.
    fn quiet(&self, conn: &mut Conn) {
        let mut ev = EpollEvent::new(quiet_events(), conn.token);
        conn.quiet = self.epoll.modify(&conn.stream.sock, &mut ev).is_ok();
    }

    /// Lets go of a connection whose socket was found empty: back to idle
    /// (or closed, if stopping). Returns it if an event came meanwhile, so
    /// the caller reads again.
    fn park(&'static self, mut conn: Conn, busy: InFlight) -> Option<(Conn, InFlight)> {
        if conn.quiet {
            // Re-registering reports at once what arrived while quiet.
            let mut ev = EpollEvent::new(conn_events(), conn.token);
            if self.epoll.modify(&conn.stream.sock, &mut ev).is_err() {
                self.close(conn, busy);
                return None;
            }
            conn.quiet = false;
        }
        let mut t = self.lock();
        let slot = match t.conns.get_mut(&conn.token) {
            Some(slot) if !self.stopping() => slot,
            _ => {
                drop(t);
                self.close(conn, busy);
                return None;
            }
        };
        if matches!(slot, Slot::Owned { pending: true }) {
            *slot = Slot::Owned { pending: false };
            return Some((conn, busy));
        }
        *slot = Slot::Idle(conn);
        t.busy -= 1;
        std::mem::forget(busy);
        None
    }

    fn close(&self, conn: Conn, busy: InFlight) {
        self.lock().conns.remove(&conn.token);
        shut(&self.epoll, conn);
        drop(busy);
    }

    /// Writes what the request left, drains its body, and keeps or closes
    /// the connection. Returns it if the next request is already buffered.
    fn complete(
        &'static self,
        f: Finish,
        busy: InFlight,
        body: &[&[u8]],
    ) -> Option<(Conn, InFlight)> {
        let Finish {
            mut conn,
            out,
            body_len,
            body: reader,
            mut close,
        } = f;
        if !out.is_empty() || body_len > 0 {
            conn.stream.responded.store(true, Ordering::Release);
            if write_response(&conn.stream, &out, body, body_len).is_err() {
                close = true;
            }
        }
        if !close {
            match reader.map(|mut r| (r.is_done() || r.drain(DRAIN_LIMIT), r)) {
                Some((true, r)) => conn.buf = r.into_buf(),
                _ => close = true,
            }
        }
        if close || self.stopping() {
            self.close(conn, busy);
            return None;
        }
        conn.buf.shrink_if_idle();
        if !conn.buf.is_empty() {
            return Some((conn, busy));
        }
        self.park(conn, busy)
    }

    /// On SIGTERM/SIGINT: stops accepting, removes the socket file, closes
    /// idle connections, and waits until no connection is in use, or until
    /// `graceful`. Returns false if requests were still running.
    pub fn stop(&'static self, graceful: Duration) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(l) = lock(&self.listener).take() {
            let _ = self.epoll.delete(&l.listener);
            l.remove_file();
        }
        let mut idle = Vec::new();
        {
            let mut t = self.lock();
            for (token, slot) in std::mem::take(&mut t.conns) {
                match slot {
                    Slot::Idle(conn) => idle.push(conn),
                    owned => drop(t.conns.insert(token, owned)),
                }
            }
        }
        for conn in idle {
            shut(&self.epoll, conn);
        }
        let deadline = Instant::now() + graceful;
        let mut t = self.lock();
        while t.busy > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            t = self
                .drained
                .wait_timeout(t, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Closes a connection for good, even if the app still holds its socket.
fn shut(epoll: &Epoll, conn: Conn) {
    let _ = epoll.delete(&conn.stream.sock);
    if Arc::strong_count(&conn.stream) > 1 {
        let _ = conn.stream.sock.shutdown(Shutdown::Both);
    }
}

/// One write of `out` and the first `body_len` bytes of `body`.
fn write_response(stream: &Stream, out: &[u8], body: &[&[u8]], body_len: usize) -> io::Result<()> {
    if body.len() > MAX_PIECES {
        let joined = body.concat();
        return write_response(stream, out, &[&joined], body_len);
    }
    let mut pieces = [IoSlice::new(&[]); MAX_PIECES + 1];
    pieces[0] = IoSlice::new(out);
    let mut n = 1;
    let mut left = body_len;
    for b in body {
        if left == 0 {
            break;
        }
        let take = b.len().min(left);
        pieces[n] = IoSlice::new(&b[..take]);
        n += 1;
        left -= take;
    }
    stream.write_all(&mut pieces[..n])
}
