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
        // Copies editors, tools and people leave.
        "x.php.bak~",
        "x.php~.bak",
        "x.php.save.1",
        ".x.php.swp",
        "#x.php#",
        "x.php.1",
        "x.php.dist",
        "x.php.orig~",
        "x.php-old",
        "x.php.txt",
    ] {
        w(file, "<?php $password = 'SECRET-db-password';");
    }
    // A mirrored PHP page and a partial script: rendered, served.
    w("index.php.html", "<p>mirrored</p>");
    w("menu.inc.js", "menu();");
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
        ("/x.php.bak~", 403),
        ("/x.php~.bak", 403),
        ("/x.php.save.1", 403),
        ("/.x.php.swp", 404), // a dotfile: never looked up
        ("/%23x.php%23", 403),
        ("/x.php.1", 403),
        ("/x.php.dist", 403),
        ("/x.php.orig~", 403),
        ("/x.php-old", 403),
        ("/x.php.txt", 403),
        ("/index.php.html", 200),
        ("/menu.inc.js", 200),
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

/// A PHP site `name` run by `user`, with `site_extra` in its site table and
/// `php_extra` in its `[php]` table.
fn php_site(cfg: &TestConfig, name: &str, user: &TestUser, site_extra: &str, php_extra: &str) {
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n{site_extra}\n[php]\n{php_extra}\n",
            user.name
        ),
    );
    open_up(cfg.path());
}

/// A PHP library installed as a distribution package would be, in a
/// directory of its own under `/usr/share/php`; removed on drop.
struct PackagedLibrary {
    dir: std::path::PathBuf,
}

impl PackagedLibrary {
    fn install() -> PackagedLibrary {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "polyhost-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::path::Path::new("/usr/share/php").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Lib.php"),
            "<?php function packaged_library() { return 'packaged library loaded'; }",
        )
        .unwrap();
        for (path, mode) in [(&dir, 0o755), (&dir.join("Lib.php"), 0o644)] {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
        }
        PackagedLibrary { dir }
    }

    fn name(&self) -> &str {
        self.dir.file_name().unwrap().to_str().unwrap()
    }
}

impl Drop for PackagedLibrary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's DokuWiki (and every `php-*` library package) loads code from
/// `/usr/share/php` through PHP's `include_path`: the default
/// `open_basedir` lets it, and still nothing else outside the root.
#[tokio::test]
async fn packaged_php_libraries_load_under_the_default_open_basedir() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    let lib = PackagedLibrary::install();
    cfg.write(
        "www/lib/index.php",
        &format!(
            "<?php require '{}/Lib.php'; echo packaged_library(), ' | ', \
             @file_get_contents('/etc/passwd') === false ? 'passwd denied' : 'passwd READ', ' | ', \
             @file_get_contents('/usr/share/doc/php8.2-common/copyright') === false ? 'doc denied' : 'doc READ';",
            lib.name()
        ),
    );
    php_site(&cfg, "lib", &user, "", "");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let r = get(bin.addr, "lib.test", "/").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "packaged library loaded | passwd denied | doc denied"),
        "{}",
        bin.log()
    );
    assert!(bin.terminate().await.success());
}

/// A site that lists its own `open_basedir` (MediaWiki's docs suggest it)
/// still has its tmp and session directories, whose paths it cannot know:
/// temp files and sessions work.
#[tokio::test]
async fn a_site_open_basedir_keeps_its_tmp_and_sessions() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    cfg.write(
        "www/ob/index.php",
        r#"<?php
$t = sys_get_temp_dir() . '/probe-' . getmypid();
$tmp = @file_put_contents($t, 'x') === 1 && @unlink($t) ? 'tmp ok' : 'tmp denied';
$name = @tempnam(sys_get_temp_dir(), 'p');
$tempnam = $name !== false && dirname($name) === sys_get_temp_dir() ? 'tempnam ok' : 'tempnam denied';
$session = @session_start() && ($_SESSION['n'] = 1) && @session_write_close()
    && @file_exists(session_save_path() . '/sess_' . session_id()) ? 'session ok' : 'session denied';
echo "$tmp | $tempnam | $session | ", @file_get_contents('/etc/passwd') === false ? 'passwd denied' : 'passwd READ';"#,
    );
    let root = cfg.path().join("www/ob");
    php_site(
        &cfg,
        "ob",
        &user,
        "",
        &format!("open_basedir = [{:?}]", root.display().to_string()),
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let r = get(bin.addr, "ob.test", "/").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "tmp ok | tempnam ok | session ok | passwd denied"),
        "{}",
        bin.log()
    );
    assert!(bin.terminate().await.success());
}

/// A multipart body carrying `content` as the file field `file`.
fn multipart(content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----polyhost-defaults-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn md5_hex(data: &[u8], dir: &std::path::Path) -> String {
    let file = dir.join("upload.bin");
    std::fs::write(&file, data).unwrap();
    let out = std::process::Command::new("md5sum")
        .arg(&file)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..32].to_owned()
}

/// A site that sets only `limits.body = "64M"` gets a 20 MiB upload whole
/// in `$_FILES` (PHP's own 8M/2M would have dropped it); a site that sets
/// `upload_max_filesize` in `[php.ini]` keeps its own.
#[tokio::test]
async fn uploads_follow_the_site_body_limit() {
    let cfg = TestConfig::new();
    let (u1, u2) = (TestUser::new(), TestUser::new());
    let script = r#"<?php header('Content-Type: application/json'); $f = $_FILES['file'] ?? null;
echo json_encode(['size' => $f['size'] ?? null, 'error' => $f['error'] ?? null,
  'md5' => ($f && $f['error'] === 0) ? md5_file($f['tmp_name']) : null,
  'post_max_size' => ini_get('post_max_size'), 'upload_max_filesize' => ini_get('upload_max_filesize')]);"#;
    cfg.write("www/up/upload.php", script);
    cfg.write("www/own/upload.php", script);
    php_site(&cfg, "up", &u1, "[limits]\nbody = \"64M\"", "");
    php_site(
        &cfg,
        "own",
        &u2,
        "[limits]\nbody = \"64M\"",
        "[php.ini]\nupload_max_filesize = \"1M\"",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let content: Vec<u8> = (0..20usize << 20).map(|i| (i * 31 % 251) as u8).collect();
    let md5 = md5_hex(&content, cfg.path());
    let (content_type, body) = multipart(&content);
    let post = |host: &str| {
        http::Request::post("/upload.php")
            .header("host", host)
            .header("content-type", &content_type)
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap()
    };
    let mut client = common::Client::connect(bin.addr).await;
    let r = client.send(post("up.test")).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("{} {}\n{}", r.status, r.text(), bin.log()));
    let limit = (64u64 << 20).to_string();
    assert_eq!(
        (
            &v["error"],
            &v["size"],
            v["md5"].as_str(),
            v["post_max_size"].as_str(),
            v["upload_max_filesize"].as_str()
        ),
        (
            &serde_json::json!(0),
            &serde_json::json!(content.len()),
            Some(md5.as_str()),
            Some(limit.as_str()),
            Some(limit.as_str())
        ),
        "{v}"
    );
    // The site's own upload_max_filesize wins: PHP refuses the file
    // (UPLOAD_ERR_INI_SIZE), post_max_size still follows limits.body.
    let mut client = common::Client::connect(bin.addr).await;
    let r = client.send(post("own.test")).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("{} {}\n{}", r.status, r.text(), bin.log()));
    assert_eq!(
        (
            &v["error"],
            v["post_max_size"].as_str(),
            v["upload_max_filesize"].as_str()
        ),
        (&serde_json::json!(1), Some(limit.as_str()), Some("1M")),
        "{v}"
    );
    assert!(bin.terminate().await.success());
}
