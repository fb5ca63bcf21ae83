//! The protocol between polyhost's router and a worker process it starts:
//! one definition both ends compile against, so a new runtime speaks it
//! from here rather than from copies.
//!
//! The exchange (see `docs/architecture.md`, "HTTP/1.1 over a Unix socket"):
//! - The supervisor starts the worker with a listening Unix socket; the
//!   worker accepts on it once its application has loaded (until then a
//!   connection is refused, which is how the supervisor sees it not ready).
//! - Requests are HTTP/1.1 with a `Content-Length` body. The router adds
//!   its metadata as [`header`] fields and sends no field under
//!   [`header::RESERVED_PREFIX`] that it did not write itself.
//! - A worker that exits before serving says why with an [`exit`] code.
//!
//! Invariants: this crate has no dependencies and does no I/O (no tokio, no
//! pyo3, no `std` outside tests); every name here is lower case ASCII, as
//! sent on the wire.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

/// The request header fields that carry router→worker metadata. A client
/// can never send one: the router strips every field under
/// [`RESERVED_PREFIX`](header::RESERVED_PREFIX) at its edge, for every
/// runtime, before it writes its own.
pub mod header {
    /// Every field the router reserves for itself starts with this.
    pub const RESERVED_PREFIX: &str = "x-polyhost-";
    /// The client's address, `IP:PORT` or `[IPv6]:PORT` (WSGI `REMOTE_ADDR`, `REMOTE_PORT`).
    pub const REMOTE_ADDR: &str = "x-polyhost-remote-addr";
    /// `http` or `https`, as the client reached the router (`wsgi.url_scheme`).
    pub const SCHEME: &str = "x-polyhost-scheme";
    /// The mount prefix the request was routed by, no trailing slash (`SCRIPT_NAME`).
    pub const SCRIPT_NAME: &str = "x-polyhost-script-name";
    /// The host name the request was routed on (`SERVER_NAME`).
    pub const SERVER_NAME: &str = "x-polyhost-server-name";
    /// The port the client connected to (`SERVER_PORT`).
    pub const SERVER_PORT: &str = "x-polyhost-server-port";

    /// Whether a field name is reserved for the router (ASCII case-insensitive:
    /// a worker parses names as sent).
    pub fn is_reserved(name: &[u8]) -> bool {
        let prefix = RESERVED_PREFIX.as_bytes();
        name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
    }
}

/// How a worker's exit status reads to the supervisor.
pub mod exit {
    /// A failure of the worker itself (could not listen, set up signals, …).
    pub const FAILED: i32 = 1;
    /// The command line was wrong.
    pub const USAGE: i32 = 2;
    /// The application could not be loaded (its traceback is on stderr, the
    /// site's error log): a fault of the site, not of polyhost, so waiting
    /// requests get 500, not 503 (`supervisor::Launcher::app_error`).
    pub const APP_IMPORT_FAILED: i32 = 3;
}

/// Bounds on the heads both ends exchange.
pub mod limits {
    /// The largest request head the router accepts from a client: the
    /// ceiling of `limits.max_header_size`.
    pub const MAX_CLIENT_HEAD: usize = 1 << 20;
    /// The most header fields the router accepts from a client: the ceiling
    /// of `limits.max_headers`.
    pub const MAX_CLIENT_FIELDS: usize = 1000;
    /// The largest request head a worker must accept: a client's largest
    /// plus room for the router's own fields.
    pub const MAX_REQUEST_HEAD: usize = MAX_CLIENT_HEAD + (64 << 10);
    /// The most request header fields a worker must accept.
    pub const MAX_REQUEST_FIELDS: usize = MAX_CLIENT_FIELDS + 100;
    /// The largest response head the router accepts from a worker.
    pub const MAX_RESPONSE_HEAD: usize = 64 << 10;
    /// The most response header fields the router accepts from a worker.
    pub const MAX_RESPONSE_FIELDS: usize = 128;
}

#[cfg(test)]
mod tests {
    use super::header::*;

    #[test]
    fn reserved_names_are_recognised_in_any_case() {
        for name in [REMOTE_ADDR, SCHEME, SCRIPT_NAME, SERVER_NAME, SERVER_PORT] {
            assert!(is_reserved(name.as_bytes()), "{name}");
            assert!(is_reserved(name.to_ascii_uppercase().as_bytes()), "{name}");
        }
        assert!(is_reserved(b"X-Polyhost-Anything"));
        assert!(is_reserved(b"x-polyhost-"));
        assert!(!is_reserved(b"x-polyhost"));
        assert!(!is_reserved(b"x-forwarded-for"));
        assert!(!is_reserved(b""));
    }
}
