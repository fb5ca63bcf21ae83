//! PHP applications that use PATH_INFO (MediaWiki's `/index.php/Main_Page`,
//! Nextcloud's `/index.php/apps/files`, Moodle's `/pluginfile.php/12/...`),
//! against the real `polyhost` binary and real php-fpm pools run as test
//! users: what a script with extra path sees, a front-controller site, and
//! every path-info hole we know, none of which may run anything but a real
//! script beneath the root or serve PHP source.

mod common;

use std::path::{Path, PathBuf};

use common::{get, open_up, Binary, TestConfig, TestUser};
use serde_json::Value;

/// Each script answers with what it is and what php-fpm told it.
const DUMP: &str = r#"<?php header('Content-Type: application/json');
echo json_encode(['script' => substr(__FILE__, strlen($_SERVER['DOCUMENT_ROOT'])),
  'SCRIPT_NAME' => $_SERVER['SCRIPT_NAME'] ?? null, 'SCRIPT_FILENAME' => $_SERVER['SCRIPT_FILENAME'] ?? null,
  'PATH_INFO' => $_SERVER['PATH_INFO'] ?? null, 'PATH_TRANSLATED' => $_SERVER['PATH_TRANSLATED'] ?? null,
  'REQUEST_URI' => $_SERVER['REQUEST_URI'] ?? null, 'PHP_SELF' => $_SERVER['PHP_SELF'] ?? null,
  'DOCUMENT_URI' => $_SERVER['DOCUMENT_URI'] ?? null], JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);"#;

/// Markers of something that must never reach a client.
const NEVER: [&str; 3] = ["PWNED", "SECRET", "OTHER RAN"];

/// A PHP site `name` run by `user` with `php_extra` in its `[php]` table:
/// scripts that dump their parameters, and the bait of the hole vectors.
/// Returns its document root.
fn site(cfg: &TestConfig, name: &str, user: &TestUser, php_extra: &str) -> PathBuf {
    let w = |rel: &str, content: &str| cfg.write(&format!("www/{name}/{rel}"), content);
    for script in ["index.php", "info.php", "dir.php/inner.php", "t.phtml"] {
        w(script, DUMP);
    }
    w("other.php", "<?php echo 'OTHER RAN';");
    // Run, it says PWNED; sent as the image it claims to be, it does not.
    w("uploads/avatar.jpg", "<?php echo strrev('DENWP');");
    w(
        "X.PHP",
        "<?php /* SECRET upper case */ echo 'PWNED upper case';",
    );
    w(
        "T.PHTML",
        "<?php /* SECRET phtml upper case */ echo 'PWNED';",
    );
    w("old.php5", "<?php /* SECRET php5 */ echo 'PWNED php5';");
    w(".hidden/x.php", "<?php echo 'PWNED hidden';");
    let outside = cfg.path().join(format!("outside-{name}"));
    cfg.write(
        &format!("outside-{name}/evil.php"),
        "<?php echo 'PWNED outside';",
    );
    let root = cfg.path().join(format!("www/{name}"));
    std::os::unix::fs::symlink(outside.join("evil.php"), root.join("out.php")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("outdir.php")).unwrap();
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n[php]\n{php_extra}\n",
            user.name
        ),
    );
    open_up(cfg.path());
    root
}

/// Two sites: `plain` (no front controller; `.php` and `.phtml` scripts)
/// and `wiki` (front controller `index.php`, as MediaWiki without rewrites).
struct Sites {
    bin: Binary,
    plain: PathBuf,
    wiki: PathBuf,
    _users: (TestUser, TestUser),
    _cfg: TestConfig,
}

async fn start() -> Sites {
    let cfg = TestConfig::new();
    let users = (TestUser::new(), TestUser::new());
    let plain = site(
        &cfg,
        "plain",
        &users.0,
        "extensions = [\".php\", \".phtml\"]",
    );
    let wiki = site(&cfg, "wiki", &users.1, "front_controller = \"index.php\"");
    let bin = Binary::start(&cfg.main(), &[]).await;
    Sites {
        bin,
        plain,
        wiki,
        _users: users,
        _cfg: cfg,
    }
}

/// GET `path` on `host`: (status, the script's parameters if it answered with them, body).
async fn fetch(s: &Sites, host: &str, path: &str) -> (u16, Option<Value>, String) {
    let r = get(s.bin.addr, host, path).await;
    let text = r.text();
    for marker in NEVER {
        assert!(
            !text.contains(marker),
            "{host}{path}: {} {text:?}\n{}",
            r.status,
            s.bin.log()
        );
    }
    (r.status, serde_json::from_str(&text).ok(), text)
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v[key].as_str()
}

fn under(root: &Path, rest: &str) -> String {
    format!("{}{rest}", root.display())
}

#[tokio::test]
async fn a_script_with_extra_path_gets_path_info() {
    let s = start().await;
    // (path, script, PATH_INFO, PHP_SELF)
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        // php-fpm with cgi.fix_pathinfo = 0 makes PHP_SELF the path info.
        (
            "/info.php/extra/path?q=1",
            "/info.php",
            Some("/extra/path"),
            "/extra/path",
        ),
        // Decoded once, as nginx and Apache pass it; REQUEST_URI as sent.
        (
            "/info.php/caf%C3%A9/a%20b/%252e",
            "/info.php",
            Some("/café/a b/%2e"),
            "/café/a b/%2e",
        ),
        ("/info.php/", "/info.php", Some("/"), "/"),
        // A dot segment of path info names no file: it is path info.
        (
            "/info.php/.NET_Framework",
            "/info.php",
            Some("/.NET_Framework"),
            "/.NET_Framework",
        ),
        // Without path info there is none (and PHP_SELF is the script).
        ("/info.php", "/info.php", None, "/info.php"),
        ("/info.php?x=/y", "/info.php", None, "/info.php"),
        // A `.php` directory is looked through.
        (
            "/dir.php/inner.php/x",
            "/dir.php/inner.php",
            Some("/x"),
            "/x",
        ),
        // Another of the site's php.extensions.
        ("/t.phtml/x/y", "/t.phtml", Some("/x/y"), "/x/y"),
        // The first script wins: the rest is path info, not a script.
        (
            "/info.php/other.php",
            "/info.php",
            Some("/other.php"),
            "/other.php",
        ),
        // Empty segments are collapsed (as nginx and Apache do); the
        // REQUEST_URI stays the one sent.
        ("/info.php//x", "/info.php", Some("/x"), "/x"),
        ("//info.php/x//y/", "/info.php", Some("/x/y/"), "/x/y/"),
        ("//info.php", "/info.php", None, "/info.php"),
    ];
    let mut wrong = Vec::new();
    for &(path, script, path_info, php_self) in cases {
        let (status, v, text) = fetch(&s, "plain.test", path).await;
        let Some(v) = v.filter(|_| status == 200) else {
            wrong.push(format!("{path}: {status} {text}"));
            continue;
        };
        let uri = path;
        let want = (
            Some(script),
            Some(under(&s.plain, script)),
            path_info,
            path_info.map(|p| under(&s.plain, p)),
            Some(uri),
            Some(php_self),
            Some(format!("{script}{}", path_info.unwrap_or(""))),
        );
        let got = (
            field(&v, "SCRIPT_NAME"),
            field(&v, "SCRIPT_FILENAME").map(str::to_owned),
            field(&v, "PATH_INFO"),
            field(&v, "PATH_TRANSLATED").map(str::to_owned),
            field(&v, "REQUEST_URI"),
            field(&v, "PHP_SELF"),
            field(&v, "DOCUMENT_URI").map(str::to_owned),
        );
        if got != want || field(&v, "script") != Some(script) {
            wrong.push(format!("{path}: got {v}\n  want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", s.bin.log());
    assert!(s.bin.terminate().await.success());
}

#[tokio::test]
async fn a_front_controller_site_takes_pretty_urls_and_path_info() {
    let s = start().await;
    // (path, script that runs, PATH_INFO)
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("/index.php/Main_Page", "/index.php", Some("/Main_Page")),
        (
            "/index.php/Special:Search?search=x",
            "/index.php",
            Some("/Special:Search"),
        ),
        ("/index.php/AC/DC", "/index.php", Some("/AC/DC")),
        ("/info.php/x", "/info.php", Some("/x")),
        // No file: the front controller, without path info.
        ("/Main_Page", "/index.php", None),
        ("/wiki/Main_Page", "/index.php", None),
        ("/info.php./x", "/index.php", None),
        ("/", "/index.php", None),
    ];
    let mut wrong = Vec::new();
    for &(path, script, path_info) in cases {
        let (status, v, text) = fetch(&s, "wiki.test", path).await;
        let got = v.as_ref().map(|v| {
            (
                field(v, "script"),
                field(v, "SCRIPT_NAME"),
                field(v, "PATH_INFO"),
                field(v, "PATH_TRANSLATED").map(str::to_owned),
                field(v, "REQUEST_URI"),
            )
        });
        let want = (
            Some(script),
            Some(script),
            path_info,
            path_info.map(|p| under(&s.wiki, p)),
            Some(path),
        );
        if status != 200 || got != Some(want.clone()) {
            wrong.push(format!("{path}: {status} {text}\n  want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", s.bin.log());
    assert!(s.bin.terminate().await.success());
}

/// Each path-info hole vector, on a site without and one with a front
/// controller: the status, and (when it is 200) which script ran. Nothing
/// but a real script beneath the root runs (no upload, no file outside, no
/// hidden file, no script named by path info), and no PHP source is sent.
#[tokio::test]
async fn path_info_holes_run_nothing_else() {
    let s = start().await;
    const FC: u16 = 200; // the front controller (index.php) answers
                         // (path, status on `plain`, status on `wiki`); a 200 must come from
                         // `index.php` on `wiki` for a path that names no script, and from
                         // `info.php` for the paths that start with it.
    let cases: &[(&str, u16, u16)] = &[
        // An upload with a PHP-looking path after it.
        ("/uploads/avatar.jpg/x.php", 404, 404),
        ("/uploads/avatar.jpg/x.php/y", 404, 404),
        ("/uploads/avatar.jpg/index.php/y", 404, 404),
        ("/uploads/avatar.jpg%2fx.php", 400, 400),
        ("/uploads/avatar.jpg%2Fx.php/y", 400, 400),
        ("/uploads/avatar.jpg%5cx.php", 400, 400),
        ("/uploads/avatar.jpg%00.php", 400, 400),
        ("/uploads/avatar.jpg%00/x.php", 400, 400),
        ("/uploads/avatar.jpg", 200, 200), // served as the image it claims to be
        // Path info naming other files: PATH_TRANSLATED is never the script.
        ("/info.php/uploads/avatar.jpg", 200, 200),
        ("/info.php/other.php", 200, 200),
        ("/info.php/out.php", 200, 200),
        // Dot segments, plain or encoded, anywhere.
        ("/info.php/../other.php", 403, 403),
        ("/info.php/%2e%2e/other.php", 403, 403),
        ("/info.php/%2E%2E/%2e%2e/etc/passwd", 403, 403),
        ("/uploads/%2e%2e/other.php", 403, 403),
        ("/info.php/./x", 403, 403),
        ("/info.php//x", 200, 200), // empty segments collapsed
        ("//index.php", 200, 200),
        ("/info.php%2f/x", 400, 400),
        ("/info.php%00/x", 400, 400),
        ("/info.php/x%00", 400, 400),
        // A `.php` name that leaves the root (a file or a directory symlink).
        ("/out.php", 403, 403),
        ("/out.php/x", 403, 403),
        ("/outdir.php/evil.php", 403, 403),
        ("/outdir.php/evil.php/x", 403, 403),
        // A `.php` directory: looked through, never run.
        ("/dir.php/", 403, 403),
        ("/dir.php/x", 404, FC),
        ("/dir.php/missing.php/x", 404, 404),
        // Hidden files, also before a script.
        ("/.hidden/x.php", 404, 404),
        ("/.hidden/x.php/y", 404, 404),
        ("/%2ehidden/x.php/y", 404, 404),
        // Letter case: the extension list is exact, PHP source never text.
        ("/X.PHP", 403, 403),
        ("/X.PHP/x", 403, 403),
        ("/INFO.PHP/x", 404, 404),
        // `.phtml` executes only on `plain`; on `wiki` it names no script.
        ("/T.PHTML/x", 403, FC),
        ("/t.phtml/x", 200, FC),
        ("/old.php5", 403, 403),
        ("/old.php5/x", 404, FC),
        // Trailing dots and spaces name other (missing) files.
        ("/info.php./x", 404, FC),
        ("/info.php%20/x", 404, FC),
        ("/info.php.", 404, FC),
        // A missing script with path info is not the front controller's.
        ("/missing.php/x", 404, 404),
    ];
    let mut wrong = Vec::new();
    for &(path, want_plain, want_wiki) in cases {
        for (host, want) in [("plain.test", want_plain), ("wiki.test", want_wiki)] {
            let (status, v, text) = fetch(&s, host, path).await;
            let script = v.as_ref().and_then(|v| field(v, "script"));
            let ran_right = match status {
                200 if path.starts_with("/info.php/") => script == Some("/info.php"),
                200 if host == "plain.test" && path.starts_with("/t.phtml") => {
                    script == Some("/t.phtml")
                }
                200 if path.starts_with("/uploads/") => text.starts_with("<?php echo"),
                200 => script == Some("/index.php"),
                _ => true,
            };
            if status != want || !ran_right {
                wrong.push(format!("{host}{path}: {status} {text:?}, want {want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", s.bin.log());
    assert!(s.bin.terminate().await.success());
}
