//! Command-line interface: the flags the supervisor passes, parsed and checked
//! into a [`Config`]. Nothing else in the crate looks at `argv`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// `polyhost-python`: the polyhost worker that embeds CPython and serves one WSGI app.
#[derive(Debug, Parser)]
// `--version` names the Python it links (`major.minor`, from `build.rs`).
#[command(
    name = "polyhost-python",
    version = concat!(env!("CARGO_PKG_VERSION"), " (Python ", env!("POLYHOST_PYTHON_VERSION"), ")"),
    about
)]
pub struct Args {
    /// Unix socket to bind and listen on (a stale socket file there is replaced).
    #[arg(long, value_name = "PATH", required_unless_present_any = ["check", "socket_fd"], conflicts_with = "socket_fd")]
    pub socket: Option<PathBuf>,

    /// An inherited Unix stream socket, already bound (polyhost binds it in a
    /// directory only root can reach): the worker listens on it once the app
    /// is imported.
    #[arg(long, value_name = "FD", value_parser = clap::value_parser!(i32).range(3..))]
    pub socket_fd: Option<i32>,

    /// The WSGI application, as `package.module:callable` (callable defaults to `application`).
    #[arg(long, value_name = "MODULE[:CALLABLE]")]
    pub app: String,

    /// Directory prepended to `sys.path` (repeatable; kept in the given order).
    #[arg(long = "path", value_name = "DIR")]
    pub paths: Vec<PathBuf>,

    /// A virtualenv made by the same interpreter the worker links against.
    #[arg(long, value_name = "VENV_DIR")]
    pub home: Option<PathBuf>,

    /// Python threads serving requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,

    /// The site's name (used in log lines only).
    #[arg(long, value_name = "NAME")]
    pub site: Option<String>,

    /// How many workers the supervisor runs for this site (sets `wsgi.multiprocess`).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub processes_hint: u32,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub graceful_timeout: u64,

    /// Import the app and exit: 0 if it imports, 3 (with the traceback) if not.
    #[arg(long)]
    pub check: bool,

    /// The app's interface: WSGI (threads) or ASGI 3.0 (one event loop).
    #[arg(long, value_enum, default_value_t = Interface::Wsgi)]
    pub interface: Interface,

    /// ASGI: requests and WebSockets in flight in this process.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrency: u32,

    /// ASGI: the lifespan protocol (auto: used if the app supports it).
    #[arg(long, value_enum, default_value_t = Lifespan::Auto)]
    pub lifespan: Lifespan,

    /// ASGI: seconds a request may run before it is cancelled (0: no limit).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub request_timeout: u64,

    /// ASGI: the largest WebSocket message accepted (larger: close 1009).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=(1 << 31)))]
    pub ws_max_message: u64,

    /// ASGI: seconds between pings on an idle WebSocket (0: no pings).
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    pub ws_ping_interval: u64,

    /// ASGI: seconds to wait for a pong before the WebSocket is closed.
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    pub ws_ping_timeout: u64,

    /// ASGI: seconds without a message either way before a WebSocket is closed (0: never).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub ws_idle_timeout: u64,
}

/// `--interface`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Interface {
    Wsgi,
    Asgi,
}

/// `--lifespan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lifespan {
    Auto,
    On,
    Off,
}

impl Lifespan {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifespan::Auto => "auto",
            Lifespan::On => "on",
            Lifespan::Off => "off",
        }
    }
}

/// The ASGI settings (unused under WSGI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsgiConfig {
    pub max_concurrency: u32,
    pub lifespan: Lifespan,
    pub request_timeout: Duration,
    pub ws_max_message: u64,
    pub ws_ping_interval: Duration,
    pub ws_ping_timeout: Duration,
    pub ws_idle_timeout: Duration,
}

/// Which callable to serve: `module` is imported, `attr` is a dotted path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    pub module: String,
    pub attr: String,
}

impl AppSpec {
    /// Parses `package.module[:callable]`; the callable defaults to `application`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (module, attr) = match s.split_once(':') {
            Some((m, a)) => (m.trim(), a.trim()),
            None => (s.trim(), "application"),
        };
        let valid = |p: &str| {
            !p.is_empty()
                && p.split('.').all(|part| {
                    !part.is_empty()
                        && !part.starts_with(|c: char| c.is_ascii_digit())
                        && part.chars().all(|c| c == '_' || c.is_alphanumeric())
                })
        };
        if !valid(module) {
            return Err(format!(
                "--app {s:?}: expected `package.module:callable`, the module part {module:?} is not a dotted Python name"
            ));
        }
        if !valid(attr) {
            return Err(format!(
                "--app {s:?}: expected `package.module:callable`, the callable part {attr:?} is not a Python name"
            ));
        }
        Ok(Self {
            module: module.to_owned(),
            attr: attr.to_owned(),
        })
    }
}

/// Where the worker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    /// A path the worker binds itself.
    Path(PathBuf),
    /// A descriptor it inherited, bound but not listening.
    Fd(i32),
}

/// Validated settings for one worker process.
#[derive(Debug, Clone)]
pub struct Config {
    /// `None` only with `--check`.
    pub socket: Option<SocketSpec>,
    pub app: AppSpec,
    pub paths: Vec<PathBuf>,
    pub home: Option<PathBuf>,
    pub threads: usize,
    pub site: Option<String>,
    pub multiprocess: bool,
    pub graceful_timeout: Duration,
    pub check: bool,
    pub interface: Interface,
    pub asgi: AsgiConfig,
}

impl TryFrom<Args> for Config {
    type Error = String;

    fn try_from(a: Args) -> Result<Self, String> {
        Ok(Self {
            socket: match (a.socket, a.socket_fd) {
                (Some(path), _) => Some(SocketSpec::Path(path)),
                (None, Some(fd)) => Some(SocketSpec::Fd(fd)),
                (None, None) => None,
            },
            app: AppSpec::parse(&a.app)?,
            paths: a.paths,
            home: a.home,
            threads: usize::from(a.threads),
            site: a.site,
            multiprocess: a.processes_hint > 1,
            graceful_timeout: Duration::from_secs(a.graceful_timeout),
            check: a.check,
            interface: a.interface,
            asgi: AsgiConfig {
                max_concurrency: a.max_concurrency,
                lifespan: a.lifespan,
                request_timeout: Duration::from_secs(a.request_timeout),
                ws_max_message: a.ws_max_message,
                ws_ping_interval: Duration::from_secs(a.ws_ping_interval),
                ws_ping_timeout: Duration::from_secs(a.ws_ping_timeout),
                ws_idle_timeout: Duration::from_secs(a.ws_idle_timeout),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_spec() {
        let check = |s: &str, want: Option<(&str, &str)>| {
            let got = AppSpec::parse(s).ok();
            let want = want.map(|(m, a)| AppSpec {
                module: m.into(),
                attr: a.into(),
            });
            assert_eq!(got, want, "{s}");
        };
        check("pkg.mod:app", Some(("pkg.mod", "app")));
        check("pkg.mod", Some(("pkg.mod", "application")));
        check("mod:obj.wsgi", Some(("mod", "obj.wsgi")));
        check("", None);
        check("a..b:app", None);
        check("a:", None);
        check("1a:app", None);
        check("a-b:app", None);
    }

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from([
            "polyhost-python",
            "--socket",
            "/tmp/s",
            "--app",
            "m",
            "--path",
            "/a",
            "--path",
            "/b",
            "--threads",
            "2",
            "--processes-hint",
            "3",
        ])
        .unwrap();
        let c = Config::try_from(a).unwrap();
        assert_eq!(c.paths, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(c.threads, 2);
        assert!(c.multiprocess);
        assert_eq!(c.socket, Some(SocketSpec::Path("/tmp/s".into())));
        assert!(Args::try_parse_from(["polyhost-python", "--app", "m"]).is_err());
        assert!(Args::try_parse_from(["polyhost-python", "--check", "--app", "m"]).is_ok());
        let fd = |args: &[&str]| {
            Args::try_parse_from([&["polyhost-python", "--app", "m"], args].concat())
                .map(|a| Config::try_from(a).unwrap().socket)
        };
        assert_eq!(fd(&["--socket-fd", "3"]).unwrap(), Some(SocketSpec::Fd(3)));
        assert!(fd(&["--socket-fd", "2"]).is_err(), "stdio is not a socket");
        assert!(fd(&["--socket-fd", "3", "--socket", "/tmp/s"]).is_err());
        let asgi = Config::try_from(
            Args::try_parse_from([
                "polyhost-python",
                "--check",
                "--app",
                "m",
                "--interface",
                "asgi",
                "--lifespan",
                "on",
                "--request-timeout",
                "5",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(asgi.interface, Interface::Asgi);
        assert_eq!(asgi.asgi.lifespan, Lifespan::On);
        assert_eq!(asgi.asgi.request_timeout, Duration::from_secs(5));
        assert_eq!(asgi.asgi.max_concurrency, 100);
        assert_eq!(asgi.asgi.ws_max_message, 16 << 20);
        assert!(Args::try_parse_from([
            "polyhost-python",
            "--check",
            "--app",
            "m",
            "--interface",
            "rsgi"
        ])
        .is_err());
    }
}
