//! The admin commands: find the socket, send one request, turn the answer
//! into output and an exit code ([`interpret`] is pure, so the contract is
//! tested without a server).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use http::Method;

use super::render;
use crate::admin::api::{ActionDone, ErrorBody};
use crate::admin::client::{self, Answer, ClientError};
use crate::app::status::{ServerStatus, SiteStatus};
use crate::app::upgrade::Upgraded;
use crate::app::{LogsReopened, ReloadReport};
use crate::config::SiteName;

/// One admin command.
#[derive(Clone, Debug)]
pub enum Action {
    Status {
        site: Option<String>,
        json: bool,
    },
    Reload,
    /// Reopen every site log (log rotation).
    ReopenLogs,
    /// `restart`, `stop` or `start` a site.
    Site(&'static str, String),
    /// Replace the running binary (seconds the new one may take).
    Upgrade {
        timeout: u64,
    },
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Status { .. } => "status",
            Action::Reload => "reload",
            Action::ReopenLogs => "reopen-logs",
            Action::Site(verb, _) => verb,
            Action::Upgrade { .. } => "upgrade",
        }
    }

    fn request(&self) -> (Method, String, Duration) {
        match self {
            Action::Status { site: None, .. } => {
                (Method::GET, "/v1/status".into(), Duration::from_secs(30))
            }
            Action::Status {
                site: Some(site), ..
            } => (
                Method::GET,
                format!("/v1/sites/{site}"),
                Duration::from_secs(30),
            ),
            // A reload waits for new generations to be ready (their startup timeouts).
            Action::Reload => (Method::POST, "/v1/reload".into(), Duration::from_secs(300)),
            Action::ReopenLogs => (
                Method::POST,
                "/v1/logs/reopen".into(),
                Duration::from_secs(30),
            ),
            // The new binary's start, then its stop when it failed.
            Action::Upgrade { timeout } => (
                Method::POST,
                format!("/v1/upgrade?timeout={timeout}"),
                Duration::from_secs(timeout.saturating_mul(2).saturating_add(60)),
            ),
            // A stop waits for in-flight requests to finish.
            Action::Site(verb, site) => (
                Method::POST,
                format!("/v1/sites/{site}/{verb}"),
                Duration::from_secs(120),
            ),
        }
    }

    fn site(&self) -> Option<&str> {
        match self {
            Action::Status { site, .. } => site.as_deref(),
            Action::Reload | Action::ReopenLogs | Action::Upgrade { .. } => None,
            Action::Site(_, site) => Some(site),
        }
    }
}

/// What the command prints and how it exits.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Outcome {
            code: 0,
            stdout,
            stderr: String::new(),
        }
    }
    fn fail(code: u8, stderr: String) -> Self {
        Outcome {
            code,
            stdout: String::new(),
            stderr,
        }
    }
}

pub fn run(config: &Path, socket: Option<&Path>, action: Action) -> ExitCode {
    let outcome = run_outcome(config, socket, &action);
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    ExitCode::from(outcome.code)
}

fn run_outcome(config: &Path, socket: Option<&Path>, action: &Action) -> Outcome {
    if let Some(site) = action.site() {
        if let Err(msg) = SiteName::parse(site) {
            return Outcome::fail(
                1,
                format!(
                    "polyhost {}: {site:?} is not a site name: {msg}\n",
                    action.name()
                ),
            );
        }
    }
    let socket: PathBuf = match socket {
        Some(s) => s.to_path_buf(),
        None => match crate::config::load_server(config) {
            Ok(server) => server.admin.socket,
            Err(errors) => {
                return Outcome::fail(
                    2,
                    format!(
                        "{errors}\npolyhost {}: cannot find the admin socket in {}; pass --config FILE or --socket PATH\n",
                        action.name(),
                        config.display()
                    ),
                )
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Outcome::fail(
                2,
                format!("polyhost: cannot start the async runtime: {e}\n"),
            )
        }
    };
    let (method, path, timeout) = action.request();
    let answer = runtime.block_on(client::call(&socket, method, &path, timeout));
    interpret(action, answer)
}

/// Turns an answer (or a failure to get one) into output and an exit code.
pub fn interpret(action: &Action, answer: Result<Answer, ClientError>) -> Outcome {
    let cmd = action.name();
    let answer = match answer {
        Ok(a) => a,
        Err(e @ ClientError::PermissionDenied { .. }) => {
            return Outcome::fail(1, format!("polyhost {cmd}: {e}\n"))
        }
        Err(e) => return Outcome::fail(2, format!("polyhost {cmd}: {e}\n")),
    };
    let text = String::from_utf8_lossy(&answer.body);
    if !answer.status.is_success() {
        let Ok(body) = serde_json::from_str::<ErrorBody>(&text) else {
            return Outcome::fail(
                1,
                format!(
                    "polyhost {cmd}: refused ({}): {}\n",
                    answer.status,
                    render::clean(text.trim())
                ),
            );
        };
        return Outcome::fail(1, render::refusal(cmd, &body));
    }
    let unexpected = |e: serde_json::Error| {
        Outcome::fail(
            2,
            format!("polyhost {cmd}: unexpected answer from polyhost ({e}); is the CLI the same version as the server?\n"),
        )
    };
    match action {
        Action::Status { json: true, .. } => Outcome::ok(render::json_safe(&text).into_owned()),
        Action::Status { site: None, .. } => match serde_json::from_str::<ServerStatus>(&text) {
            Ok(s) => Outcome::ok(render::status_table(&s)),
            Err(e) => unexpected(e),
        },
        Action::Status { site: Some(_), .. } => match serde_json::from_str::<SiteStatus>(&text) {
            Ok(s) => Outcome::ok(render::site_detail(&s)),
            Err(e) => unexpected(e),
        },
        Action::Reload => match serde_json::from_str::<ReloadReport>(&text) {
            Ok(r) => Outcome {
                // 3: applied, but some sites failed (each alone).
                code: if r.failed.is_empty() { 0 } else { 3 },
                stdout: render::reload_report(&r),
                stderr: r
                    .warnings
                    .iter()
                    .map(|w| format!("polyhost reload: warning: {}\n", render::clean(w)))
                    .chain(std::iter::once(render::failed_sites("reload", &r.failed)))
                    .collect(),
            },
            Err(e) => unexpected(e),
        },
        Action::ReopenLogs => match serde_json::from_str::<LogsReopened>(&text) {
            Ok(r) => Outcome::ok(format!(
                "reopened the logs of {} site(s); sent SIGUSR1 to {} php-fpm master(s)\n",
                r.sites, r.php_masters
            )),
            Err(e) => unexpected(e),
        },
        Action::Upgrade { .. } => match serde_json::from_str::<Upgraded>(&text) {
            Ok(u) => Outcome::ok(format!(
                "upgraded: {} (pid {}) serves; pid {} finishes its requests and exits\n",
                render::clean(&u.binary),
                u.new_pid,
                u.old_pid
            )),
            Err(e) => unexpected(e),
        },
        Action::Site(..) => match serde_json::from_str::<ActionDone>(&text) {
            Ok(done) => Outcome::ok(format!(
                "{}: {}\n",
                render::clean(&done.site),
                render::clean(&done.message)
            )),
            Err(e) => unexpected(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use expect_test::{expect, Expect};
    use http::StatusCode;

    fn check(action: Action, answer: Result<Answer, ClientError>, expected: Expect) {
        let o = interpret(&action, answer);
        expected.assert_eq(&format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            o.code, o.stdout, o.stderr
        ));
    }

    fn answer(status: u16, body: &str) -> Result<Answer, ClientError> {
        Ok(Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_owned()),
        })
    }

    #[test]
    fn refused_reload_lists_every_error_with_file_and_key() {
        check(
            Action::Reload,
            answer(
                422,
                r#"{"error":"the configuration is invalid; nothing changed and the running sites keep serving. Fix these and reload again",
                    "errors":[{"file":"vhosts/x.toml","key":"limits.memory","message":"\"12 potatoes\" is not a size (e.g. \"512M\")"},
                              {"file":"vhosts/y.toml","key":"","message":"TOML parse error at line 1, column 5"}]}"#,
            ),
            expect![[r#"
                exit 1
                --- stdout
                --- stderr
                vhosts/x.toml: limits.memory: "12 potatoes" is not a size (e.g. "512M")
                vhosts/y.toml: TOML parse error at line 1, column 5
                polyhost reload: refused: the configuration is invalid; nothing changed and the running sites keep serving. Fix these and reload again
            "#]],
        );
    }

    #[test]
    fn reopen_logs_says_what_it_did() {
        check(
            Action::ReopenLogs,
            answer(200, r#"{"sites":3,"php_masters":1}"#),
            expect![[r#"
                exit 0
                --- stdout
                reopened the logs of 3 site(s); sent SIGUSR1 to 1 php-fpm master(s)
                --- stderr
            "#]],
        );
    }

    #[test]
    fn upgrade_says_who_serves_or_why_nothing_changed() {
        check(
            Action::Upgrade { timeout: 60 },
            answer(
                200,
                r#"{"old_pid":10,"new_pid":20,"binary":"/usr/bin/polyhost"}"#,
            ),
            expect![[r#"
                exit 0
                --- stdout
                upgraded: /usr/bin/polyhost (pid 20) serves; pid 10 finishes its requests and exits
                --- stderr
            "#]],
        );
        check(
            Action::Upgrade { timeout: 60 },
            answer(
                502,
                r#"{"error":"the new binary /usr/bin/polyhost (pid 20) failed before it was ready: it exited (exit status: 1); it was stopped and this polyhost serves on"}"#,
            ),
            expect![[r#"
                exit 1
                --- stdout
                --- stderr
                polyhost upgrade: refused: the new binary /usr/bin/polyhost (pid 20) failed before it was ready: it exited (exit status: 1); it was stopped and this polyhost serves on
            "#]],
        );
    }

    #[test]
    fn reload_report_and_warnings() {
        check(
            Action::Reload,
            answer(
                200,
                r#"{"added":["new"],"removed":["old"],"restarted":["shop"],"rerouted":[],"unchanged":3,"warnings":["server settings take effect when polyhost is restarted"]}"#,
            ),
            expect![[r#"
                exit 0
                --- stdout
                reloaded: 1 added (new), 1 removed (old), 1 restarted (shop), 0 rerouted, 3 unchanged
                --- stderr
                polyhost reload: warning: server settings take effect when polyhost is restarted
            "#]],
        );
    }

    #[test]
    fn unreachable_is_exit_2_and_permission_is_exit_1() {
        let socket = PathBuf::from("/run/polyhost/admin.sock");
        check(
            Action::Reload,
            Err(ClientError::Unreachable {
                socket: socket.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
            expect![[r#"
                exit 2
                --- stdout
                --- stderr
                polyhost reload: cannot reach polyhost at /run/polyhost/admin.sock: is `polyhost serve` running? (entity not found)
            "#]],
        );
        check(
            Action::Site("restart", "shop".into()),
            Err(ClientError::PermissionDenied { socket }),
            expect![[r#"
                exit 1
                --- stdout
                --- stderr
                polyhost restart: permission denied on /run/polyhost/admin.sock: run this as root or as a member of the [admin] group
            "#]],
        );
    }

    #[test]
    fn forbidden_and_unknown_site_are_refusals() {
        check(
            Action::Status {
                site: None,
                json: false,
            },
            answer(
                403,
                r#"{"error":"permission denied: uid 1001 may not use the admin API; run it as root or as a member of group \"panel\""}"#,
            ),
            expect![[r#"
                exit 1
                --- stdout
                --- stderr
                polyhost status: refused: permission denied: uid 1001 may not use the admin API; run it as root or as a member of group "panel"
            "#]],
        );
        check(
            Action::Site("stop", "nope".into()),
            answer(
                404,
                r#"{"error":"no site named \"nope\"; `polyhost status` lists the sites"}"#,
            ),
            expect![[r#"
                exit 1
                --- stdout
                --- stderr
                polyhost stop: refused: no site named "nope"; `polyhost status` lists the sites
            "#]],
        );
    }

    #[test]
    fn a_bad_site_name_is_refused_before_connecting() {
        let o = run_outcome(
            Path::new("/nonexistent/polyhost.toml"),
            None,
            &Action::Site("restart", "../x".into()),
        );
        assert_eq!(o.code, 1);
        assert!(o.stderr.contains("is not a site name"), "{}", o.stderr);
    }
}
