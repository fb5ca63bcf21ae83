//! Privilege separation: polyhost as two processes (issue 21).
//!
//! - The **supervisor** (this process when `polyhost serve` starts, root)
//!   keeps everything privileged: it loads and validates the
//!   configuration, reads private keys, binds the listening sockets, the
//!   runtime sockets and the admin socket, forks and confines site
//!   processes (`supervisor`, `isolation`), writes cgroup files, serves the
//!   admin API and `/metrics`, and plans and applies reloads (`app`).
//! - The **router** (`polyhost router`, started by the supervisor as
//!   `router_user` with no capability but `CAP_DAC_READ_SEARCH`) serves
//!   HTTP: it accepts on listeners it inherited, terminates TLS, routes,
//!   serves static files, and speaks FastCGI and HTTP to the site processes
//!   over runtime sockets it may connect to but never binds. It asks the
//!   supervisor, never the kernel, for anything privileged: starting a
//!   site's processes on demand, recycling one.
//!
//! They talk over one `SOCK_STREAM` socket pair the router inherits
//! ([`frame`]: length-prefixed JSON; [`wire`]: the messages). The
//! supervisor tells the router what to serve ([`wire::Desired`], complete,
//! when the router starts; [`wire::DesiredChanges`], the sites that changed,
//! after every later change) and which processes are ready ([`wire::GroupUpdate`]); the
//! router tells the supervisor what it uses ([`wire::ToSupervisor`]).
//! Nothing crosses per request: the router leases ready processes itself
//! and reports usage in batches.
//!
//! Invariants:
//! - The router never receives an admin or metrics token
//!   (`config::ServerConfig` does not serialise them) nor the admin socket.
//! - A process the supervisor unpublished is stopped only after the router
//!   said it holds no lease on it ([`wire::ToSupervisor::Drained`]); a
//!   router that died holds none.
//! - The supervisor retires a replaced generation only after the router
//!   said it serves the new one ([`wire::ToSupervisor::Applied`]), or after
//!   a bounded wait when the router is down (a new router is told the
//!   current state before it accepts).

pub mod frame;
pub mod router_end;
pub mod supervisor_end;
pub mod upgrade;
pub mod wire;
