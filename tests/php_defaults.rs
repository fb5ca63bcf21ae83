//! Safe and unsurprising PHP defaults, against the real `polyhost` binary
//! (and real php-fpm pools run as test users): PHP source is never sent as
//! text by any site, PHP or not; `open_basedir` lets packaged PHP libraries
//! be read and always holds the site's own tmp and session directories; a
//! site's upload limits follow its `limits.body`.

mod common;

use common::{get, open_up, python_test_site, Binary, TestConfig, TestUser};

/// PHP source with a password in it, under every name that holds PHP
/// source, in the root of a site `name`; and what is fine to serve.
fn plant_source(cfg: &TestConfig, name: &str) {
    let w = |rel: &str, content: &str| cfg.write(&format!("www/{name}/{rel}"), content);
    for file in [
        "wp-config.php",
        "WP-CONFIG.PHP",
        "Config.Php",
        "old.php5",
        "lib/db.inc",
        "page.phtml",
        "tool.phar",
        "wp-config.php~",
        "config.php.bak",
        "config.PHP.orig",
        "dir/index.php",
        "assets/x.php",
    ] {
        w(file, "<?php $password = 'SECRET-db-password';");
    }
    w("page.html", "<p>hello</p>");
    w("notes.txt~", "notes");
    w("assets/app.css", "body{}");
}

/// Each PHP source name answers 403 without its content; other files are
/// served.
async fn check_source_refused(bin: &Binary, host: &str, prefix: &str) -> Vec<String> {
    let cases: &[(&str, u16)] = &[
        ("/wp-config.php", 403),
        ("/WP-CONFIG.PHP", 403),
        ("/Config.Php", 403),
        ("/old.php5", 403),
        ("/lib/db.inc", 403),
        ("/page.phtml", 403),
        ("/tool.phar", 403),
        ("/wp-config.php~", 403),
        ("/config.php.bak", 403),
        ("/config.PHP.orig", 403),
        ("/dir/index.php", 403),
        ("/dir/", 403), // index.php as the directory's index
        ("/assets/x.php", 403),
        ("/page.html", 200),
        ("/notes.txt~", 200),
        ("/assets/app.css", 200),
    ];
    let mut wrong = Vec::new();
    for (path, want) in cases {
        let path = format!("{prefix}{path}");
        let r = get(bin.addr, host, &path).await;
        if r.status != *want || r.text().contains("SECRET") {
            wrong.push(format!(
                "{host}{path}: {} {:?}, want {want}",
                r.status,
                r.text()
            ));
        }
    }
    wrong
}

/// A static site (as a site whose PHP was switched off is) and a Python
/// site with a document root never send PHP source as text.
#[tokio::test]
async fn no_site_sends_php_source_as_text() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    plant_source(&cfg, "files");
    cfg.write(
        "vhosts/files.toml",
        "hosts = [\"files.test\"]\nroot = \"www/files\"\n[static]\nindex = [\"index.php\", \"index.html\"]\n",
    );
    // The Python app is mounted at /app: the root's files are served at /.
    python_test_site(
        &cfg,
        "py",
        &user,
        "pyapp",
        "[static]\nindex = [\"index.php\"]\npaths = [\"/assets\"]",
        "mount = \"/app\"",
    );
    plant_source(&cfg, "py");
    open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    let mut wrong = check_source_refused(&bin, "files.test", "").await;
    wrong.extend(check_source_refused(&bin, "py.test", "").await);
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", bin.log());
    assert!(bin.terminate().await.success());
}
