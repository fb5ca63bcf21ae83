//! What the admin commands print: the status table (made to be read at
//! 3 a.m.: one line per site, failures and their reason visible), one site
//! in detail, a reload report, a refusal. Pure functions, snapshot-tested.
//!
//! Every string that comes from the server goes through [`clean`] before it
//! is printed: a site controls some of them (its php-fpm's log lines become
//! `last_error`), and a terminal obeys the control sequences in what it is
//! given (OSC 52 writes the clipboard, CSI rewrites the screen).

use std::borrow::Cow;
use std::fmt::Write;

mod answers;
mod server_lines;
pub use answers::{failed_sites, refusal, reload_report};
use server_lines::{cluster_line, on_demand_line};

use crate::app::status::{SandboxStatus, ServerStatus, SiteStatus};

/// Longest last error shown in the table; `polyhost status SITE` shows all of it.
const LAST_ERROR_WIDTH: usize = 60;

/// `s` with every character a terminal could act on written out as an
/// escape: C0 controls (ESC, BEL, CR, LF, TAB, ...) and DEL as `\x1b`, C1
/// controls (U+0080–U+009F, e.g. the one-character CSI U+009B) and the
/// Unicode bidirectional overrides and isolates (which reorder what is
/// shown) as `\u{9b}`. Everything else, non-ASCII text included, is kept.
/// By hand: no crate at hand does exactly this, and it is a dozen lines.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(acts_on_terminal) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !acts_on_terminal(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// A control character (C0, DEL, C1) or a bidirectional override/isolate.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// JSON text (the admin API's, printed by `--json`) with every character
/// [`clean`] escapes written as a JSON `\u` escape. serde_json escapes the
/// C0 controls itself but leaves DEL, C1 and the bidirectional controls raw.
/// Outside strings, JSON text is ASCII punctuation, literals and
/// whitespace (never such a character), so each one found is inside a string,
/// where `\u00XX` means the same character: the JSON is unchanged. A raw C0
/// control other than JSON whitespace (not valid JSON) is escaped the same way.
pub fn json_safe(text: &str) -> Cow<'_, str> {
    let escape = |c: char| acts_on_terminal(c) && !matches!(c, '\n' | '\r' | '\t');
    if !text.chars().any(escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escape(c) {
            // Every such character is in the Basic Multilingual Plane: one \u escape.
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn cleaned(s: &str) -> String {
    clean(s).into_owned()
}

pub fn status_table(s: &ServerStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "polyhost {} (pid {}), up {}, limits: {}, reloads: {} ok, {} refused",
        clean(&s.version),
        s.pid,
        duration(s.uptime_seconds),
        // "cgroup v1 (memory at /sys/...)": the paths are for `status --json`.
        clean(s.limits_backend.split(" (").next().unwrap_or_default()),
        s.reloads,
        s.reloads_failed
    );
    if let Some(c) = &s.cluster {
        out.push_str(&cluster_line(c));
    }
    if let Some(d) = &s.on_demand {
        out.push_str(&on_demand_line(d));
    }
    if s.sites.is_empty() {
        out.push_str("no sites (add files to vhosts_dir, then `polyhost reload`)\n");
        return out;
    }
    let header = [
        "SITE",
        "STATE",
        "RUNTIME",
        "PROCS",
        "MEMORY",
        "REQUESTS",
        "5XX",
        "RESTARTS",
        "OOM",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 10]> = s
        .sites
        .iter()
        .map(|site| {
            [
                cleaned(&site.name),
                cleaned(&site.state),
                runtime(site),
                site.processes.to_string(),
                memory(site),
                site.requests.to_string(),
                site.responses_5xx.to_string(),
                site.restarts.to_string(),
                site.oom_kills.to_string(),
                site.last_error
                    .clone()
                    .or_else(|| {
                        site.not_applied
                            .as_ref()
                            .map(|e| format!("not applied: {e}"))
                    })
                    .or_else(|| site.acme_error.as_ref().map(|e| format!("acme: {e}")))
                    .map_or_else(|| "-".to_owned(), |e| truncate(&e, LAST_ERROR_WIDTH)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let numeric = (3..9).contains(&i) && i != 4;
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else if numeric {
                let _ = write!(l, "{cell:>w$}  ", w = widths[i]);
            } else {
                let _ = write!(l, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &header);
    for row in &rows {
        line(&mut out, &row.each_ref().map(String::as_str));
    }
    let attention: Vec<Cow<'_, str>> = s
        .sites
        .iter()
        .filter(|site| matches!(site.state.as_str(), "failed" | "stopped"))
        .map(|site| clean(&site.name))
        .collect();
    if !attention.is_empty() {
        let _ = writeln!(
            out,
            "attention: {} (details: polyhost status SITE)",
            attention.join(", ")
        );
    }
    out
}

/// The runtime as the table shows it: with the Python version when known
/// (`python3.13`), an ASGI site's with `/asgi` (`python3.13/asgi`; WSGI,
/// the default, has no suffix), an `[app]` on a loopback port `app/port`
/// (socket activation, the default, is plain `app`).
fn runtime(site: &SiteStatus) -> String {
    let mut shown = cleaned(&site.runtime);
    if let Some(version) = site.python_version.as_deref() {
        shown.push_str(&cleaned(version));
    }
    match (site.interface.as_deref(), site.listen.as_deref()) {
        (Some("asgi"), _) => format!("{shown}/asgi"),
        (_, Some("port")) => format!("{shown}/port"),
        _ => shown,
    }
}

pub fn site_detail(s: &SiteStatus) -> String {
    let mut out = String::new();
    let pids: Vec<String> = s.pids.iter().map(i32::to_string).collect();
    let python = s.interface.as_deref().map(|i| {
        let mut rows = vec![("interface", cleaned(i))];
        if let Some(version) = s.python_version.as_deref() {
            rows.push(("python", cleaned(version)));
        }
        if i == "asgi" {
            rows.push(("websockets", format!("{} open", s.websockets_open)));
        }
        rows
    });
    let app = s.listen.as_deref().map(|l| {
        let listen = match l {
            "socket" => "socket (fd 3)".to_owned(),
            other => cleaned(other),
        };
        vec![
            ("listen", listen),
            ("websockets", format!("{} open", s.websockets_open)),
        ]
    });
    let rows = [
        ("site", cleaned(&s.name)),
        ("state", cleaned(&s.state)),
        ("runtime", cleaned(&s.runtime)),
        ("hosts", cleaned(&s.hosts.join(", "))),
        ("generation", s.generation.to_string()),
        (
            "processes",
            if pids.is_empty() {
                "0".to_owned()
            } else {
                format!("{} (pids {})", s.processes, pids.join(", "))
            },
        ),
        ("memory", memory(s)),
        (
            "requests",
            format!("{} ({} answered 5xx)", s.requests, s.responses_5xx),
        ),
        ("restarts", s.restarts.to_string()),
        ("oom kills", s.oom_kills.to_string()),
        (
            "last error",
            s.last_error.as_deref().map_or_else(|| "-".into(), cleaned),
        ),
    ];
    let sandbox = s.sandbox.as_ref().map(|b| ("sandbox", sandbox(b)));
    let tls = [
        s.certificate_not_after
            .map(|t| ("certificate", format!("expires at {t} (Unix seconds)"))),
        s.acme_error.as_deref().map(|e| ("acme error", cleaned(e))),
        s.not_applied.as_deref().map(|e| {
            (
                "not applied",
                format!("{} (it serves its previous configuration)", cleaned(e)),
            )
        }),
    ];
    let (head, tail) = rows.split_at(3);
    for (k, v) in head
        .iter()
        .chain(python.iter().flatten())
        .chain(app.iter().flatten())
        .chain(sandbox.iter())
        .chain(tail.iter())
        .chain(tls.iter().flatten())
    {
        let _ = writeln!(out, "{k:<11}{v}");
    }
    out
}

/// `on (namespaces, network none, read-only view)` or `off (why)`.
fn sandbox(b: &SandboxStatus) -> String {
    if !b.on {
        return format!(
            "off ({})",
            b.off_because.as_deref().map_or("-".into(), cleaned)
        );
    }
    let layers: Vec<String> = b
        .layers
        .iter()
        .map(|l| match l.as_str() {
            "network" => "network none".to_owned(),
            "view" => "read-only view".to_owned(),
            other => cleaned(other),
        })
        .collect();
    format!("on ({})", layers.join(", "))
}

fn memory(s: &SiteStatus) -> String {
    match (s.memory_bytes, s.memory_limit_bytes) {
        (None, None) => "-".into(),
        (Some(used), None) => bytes(used),
        (None, Some(limit)) => format!("-/{}", bytes(limit)),
        (Some(used), Some(limit)) => format!("{}/{}", bytes(used), bytes(limit)),
    }
}

/// `512M`, `1.5G`, `34.1M`, `812K`, `100B`.
fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            let v = n as f64 / size as f64;
            return if (v - v.round()).abs() < 0.05 {
                format!("{}{unit}", v.round())
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{n}B")
}

/// `45s`, `12m`, `3h12m`, `4d3h`.
fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Cleaned ([`clean`]), newlines shown as spaces, cut to `width` characters.
fn truncate(s: &str, width: usize) -> String {
    let one_line = cleaned(&s.replace('\n', " "));
    if one_line.chars().count() <= width {
        one_line
    } else {
        let cut: String = one_line.chars().take(width - 1).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::ErrorBody;
    use expect_test::expect;

    fn site(name: &str, state: &str, runtime: &str) -> SiteStatus {
        SiteStatus {
            name: name.into(),
            state: state.into(),
            runtime: runtime.into(),
            hosts: vec![format!("{name}.example")],
            generation: 1,
            pids: vec![],
            processes: 0,
            memory_bytes: None,
            memory_limit_bytes: None,
            requests: 0,
            responses_5xx: 0,
            restarts: 0,
            oom_kills: 0,
            last_error: None,
            interface: None,
            python_version: None,
            listen: None,
            websockets_open: 0,
            sandbox: None,
            certificate_not_after: None,
            acme_error: None,
            not_applied: None,
        }
    }

    fn server() -> ServerStatus {
        let mut shop = site("shop", "running", "python");
        shop.pids = vec![4242, 4250];
        shop.processes = 2;
        shop.memory_bytes = Some(35_756_032);
        shop.memory_limit_bytes = Some(512 << 20);
        shop.requests = 120_345;
        shop.responses_5xx = 12;
        shop.restarts = 1;
        shop.interface = Some("asgi".into());
        shop.python_version = Some("3.13".into());
        shop.websockets_open = 3;
        shop.sandbox = Some(SandboxStatus {
            on: true,
            layers: vec!["namespaces".into(), "view".into()],
            off_because: None,
        });
        let mut blog = site("blog", "failed", "python");
        blog.restarts = 6;
        blog.oom_kills = 2;
        blog.memory_limit_bytes = Some(256 << 20);
        blog.last_error = Some("crash loop: OOM-killed (killed by signal 9 (SIGKILL)) after the app allocated too much".into());
        blog.interface = Some("wsgi".into());
        blog.sandbox = Some(SandboxStatus {
            on: false,
            layers: Vec::new(),
            off_because: Some("sandbox = false".into()),
        });
        let mut www = site("www", "static", "static");
        www.requests = 9;
        ServerStatus {
            version: "0.1.0".into(),
            pid: 1234,
            uptime_seconds: 11_540,
            limits_backend: "cgroup v1 (memory at /sys/fs/cgroup/memory/polyhost-1)".into(),
            reloads: 3,
            reloads_failed: 1,
            sites: vec![blog, shop, www, site("sleepy", "idle", "python")],
            cluster: None,
            on_demand: None,
        }
    }

    #[test]
    fn on_demand_tls_is_one_line_naming_its_first_certificates() {
        let mut d = crate::metrics::on_demand::OnDemandSnapshot {
            asks_allowed: 7,
            asks_denied: 3,
            rate_limited: 40,
            client_limited: 12,
            busy: 2,
            orders: 8,
            orders_failed: 1,
            handshakes: crate::metrics::on_demand::RouterOnDemandSnapshot {
                refused_recently: 30,
                too_many_waiting: 5,
                waiting: 1,
            },
            ..Default::default()
        };
        for i in 0..7 {
            d.certificates.insert(format!("c{i}.example"), 0);
        }
        expect![[r#"
            on-demand TLS: 7 certificates (c0.example, c1.example, c2.example, c3.example, c4.example, …); asks: 7 allowed, 3 denied, 0 failed; new names refused: 40 over the rate, 12 over a client's share, 2 while busy; orders: 8 (1 failed); handshakes: 1 waiting, 30 refused for a name refused recently, 5 for too many waiting
        "#]]
        .assert_eq(&on_demand_line(&d));
    }

    #[test]
    fn status_table_for_a_bad_night() {
        expect![[r#"
            polyhost 0.1.0 (pid 1234), up 3h12m, limits: cgroup v1, reloads: 3 ok, 1 refused
            SITE    STATE    RUNTIME          PROCS  MEMORY      REQUESTS  5XX  RESTARTS  OOM  LAST ERROR
            blog    failed   python               0  -/256M             0    0         6    2  crash loop: OOM-killed (killed by signal 9 (SIGKILL)) after…
            shop    running  python3.13/asgi      2  34.1M/512M    120345   12         1    0  -
            www     static   static               0  -                  9    0         0    0  -
            sleepy  idle     python               0  -                  0    0         0    0  -
            attention: blog (details: polyhost status SITE)
        "#]]
        .assert_eq(&status_table(&server()));
    }

    #[test]
    fn one_site_in_detail() {
        expect![[r#"
            site       shop
            state      running
            runtime    python
            interface  asgi
            python     3.13
            websockets 3 open
            sandbox    on (namespaces, read-only view)
            hosts      shop.example
            generation 1
            processes  2 (pids 4242, 4250)
            memory     34.1M/512M
            requests   120345 (12 answered 5xx)
            restarts   1
            oom kills  0
            last error -
        "#]]
        .assert_eq(&site_detail(&server().sites[1]));
    }

    #[test]
    fn a_site_without_its_sandbox_says_why() {
        let detail = site_detail(&server().sites[0]);
        expect!["sandbox    off (sandbox = false)"].assert_eq(
            detail
                .lines()
                .find(|l| l.starts_with("sandbox"))
                .unwrap_or("no sandbox line"),
        );
        let www = site_detail(&server().sites[2]);
        assert!(
            !www.contains("sandbox"),
            "a static site runs no process: {www}"
        );
    }

    #[test]
    fn an_app_site_shows_how_it_listens() {
        let mut api = site("api", "running", "app");
        api.listen = Some("port".into());
        let mut node = site("node", "running", "app");
        node.listen = Some("socket".into());
        assert_eq!(
            (runtime(&api), runtime(&node)),
            ("app/port".into(), "app".into())
        );
        let detail = site_detail(&node);
        assert!(
            detail.contains("listen     socket (fd 3)\nwebsockets 0 open\n"),
            "{detail}"
        );
        assert!(site_detail(&api).contains("listen     port\n"));
    }

    #[test]
    fn no_sites() {
        let mut s = server();
        s.sites.clear();
        expect![[r#"
            polyhost 0.1.0 (pid 1234), up 3h12m, limits: cgroup v1, reloads: 3 ok, 1 refused
            no sites (add files to vhosts_dir, then `polyhost reload`)
        "#]]
        .assert_eq(&status_table(&s));
    }

    #[test]
    fn a_cluster_node_shows_its_etcd_link() {
        let mut s = server();
        s.sites.clear();
        s.cluster = Some(crate::app::status::ClusterLinkStatus {
            node: "web-3".into(),
            etcd_connected: false,
            since_unix: 1_796_000_000,
            applied_revision: 42,
            error: Some("etcd at http://10.0.0.9:2379: connection refused".into()),
        });
        expect![[r#"
            polyhost 0.1.0 (pid 1234), up 3h12m, limits: cgroup v1, reloads: 3 ok, 1 refused
            cluster: node web-3, etcd NOT connected since 2026-11-30 00:53:20 UTC (etcd at http://10.0.0.9:2379: connection refused); serving the last applied state, applied revision 42
            no sites (add files to vhosts_dir, then `polyhost reload`)
        "#]]
        .assert_eq(&status_table(&s));
    }

    /// What a site can put in its php-fpm log, which becomes `last_error`:
    /// an OSC 52 clipboard write, a screen clear, a one-character C1 CSI, a
    /// carriage return that would overwrite the line, DEL, a right-to-left
    /// override, a newline that would fake a row.
    const HOSTILE: &str = "php said: \u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{1b}[2J\u{9b}31mred\rstate      running\u{7f}\u{202e}txt.exe\nsite       other";

    #[test]
    fn site_controlled_text_reaches_the_terminal_escaped() {
        let mut s = server();
        s.sites[1].last_error = Some(HOSTILE.into());
        s.sites[1].hosts = vec!["shop.example\u{1b}[8m".into()];
        let table = status_table(&s);
        let detail = site_detail(&s.sites[1]);
        for out in [&table, &detail] {
            assert!(
                !out.chars().any(|c| c != '\n' && acts_on_terminal(c)),
                "{out:?}"
            );
        }
        expect![[r#"
            site       shop
            state      running
            runtime    python
            interface  asgi
            python     3.13
            websockets 3 open
            sandbox    on (namespaces, read-only view)
            hosts      shop.example\x1b[8m
            generation 1
            processes  2 (pids 4242, 4250)
            memory     34.1M/512M
            requests   120345 (12 answered 5xx)
            restarts   1
            oom kills  0
            last error php said: \x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\u{9b}31mred\x0dstate      running\x7f\u{202e}txt.exe\x0asite       other
        "#]]
        .assert_eq(&detail);
        expect![[r#"
            shop    running  python3.13/asgi      2  34.1M/512M    120345   12         1    0  php said: \x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\u{9b}31mred\x0d…
        "#]]
        .assert_eq(&table.lines().nth(3).map(|l| format!("{l}\n")).unwrap_or_default());
        let body = ErrorBody {
            error: format!("site shop: its new processes did not become ready: {HOSTILE}"),
            errors: Vec::new(),
        };
        assert!(!refusal("reload", &body).contains('\u{1b}'));
    }

    #[test]
    fn json_keeps_its_meaning_without_raw_controls() {
        let status = SiteStatus {
            last_error: Some(HOSTILE.into()),
            ..site("shop", "failed", "php")
        };
        let text = serde_json::to_string(&status).unwrap();
        assert!(
            text.contains('\u{9b}'),
            "serde_json leaves C1 raw: {text:?}"
        );
        let safe = json_safe(&text);
        assert!(!safe.chars().any(acts_on_terminal), "{safe}");
        let back: SiteStatus = serde_json::from_str(&safe).unwrap();
        assert_eq!(back.last_error.as_deref(), Some(HOSTILE));
        expect![[r#""php said: \u001b]52;c;cm0gLXJmIH4=\u0007\u001b[2J\u009b31mred\rstate      running\u007f\u202etxt.exe\nsite       other""#]]
        .assert_eq(&json_safe(&serde_json::to_string(HOSTILE).unwrap()));
    }

    #[test]
    fn sizes_and_durations() {
        let got: Vec<String> = [0, 100, 2048, 35_756_032, 512 << 20, 3 << 29]
            .map(bytes)
            .into();
        assert_eq!(got, ["0B", "100B", "2K", "34.1M", "512M", "1.5G"]);
        assert_eq!(
            [5, 125, 11_540, 200_000].map(duration),
            ["5s", "2m", "3h12m", "2d7h"]
        );
    }
}
