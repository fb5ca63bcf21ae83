//! Real frameworks from PyPI (a virtualenv made by `scripts/setup.sh`, at
//! `$TEST_PYTHON_VENV`, default `/var/tmp/polyhost-test-venv`): Flask and
//! Django, mounted at `/` and at `/app`; their URL builders must produce
//! prefixed URLs (SCRIPT_NAME is right).

mod common;

use common::{get, open_up, python_worker, InProcess, TestConfig, TestUser};

fn venv() -> std::path::PathBuf {
    let v = std::env::var_os("TEST_PYTHON_VENV").map_or_else(
        || "/var/tmp/polyhost-test-venv".into(),
        std::path::PathBuf::from,
    );
    assert!(
        v.join("bin/python").exists(),
        "the test virtualenv {} is missing: run ./scripts/setup.sh",
        v.display()
    );
    v
}

fn framework_site(cfg: &TestConfig, name: &str, user: &TestUser, app: &str, mount: &str) {
    for f in ["flaskapp.py", "djangoapp.py"] {
        cfg.write(
            &format!("apps/{f}"),
            &std::fs::read_to_string(format!("{}/tests/apps/{f}", env!("CARGO_MANIFEST_DIR")))
                .unwrap(),
        );
    }
    cfg.write(&format!("www/{name}/robots.txt"), "static\n");
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n[python]\napp = \"{app}\"\npath = [\"apps\"]\nhome = \"{}\"\nmount = \"{mount}\"\nworker = \"{}\"\n",
            user.name,
            venv().display(),
            python_worker().display()
        ),
    );
    open_up(cfg.path());
}

#[tokio::test]
async fn flask_and_django_at_the_root_and_under_a_prefix() {
    let cfg = TestConfig::new();
    let users: Vec<TestUser> = (0..4).map(|_| TestUser::new()).collect();
    framework_site(&cfg, "flask-root", &users[0], "flaskapp", "/");
    framework_site(&cfg, "flask-app", &users[1], "flaskapp", "/app");
    framework_site(&cfg, "django-root", &users[2], "djangoapp", "/");
    framework_site(&cfg, "django-app", &users[3], "djangoapp", "/app");
    let server = InProcess::start(&cfg).await;
    let cases = [
        ("flask-root.test", "/", "flask index link=/other script="),
        (
            "flask-app.test",
            "/app/",
            "flask index link=/app/other script=/app",
        ),
        ("flask-app.test", "/app/other", "flask other"),
        ("django-root.test", "/", "django index link=/other/ script="),
        (
            "django-app.test",
            "/app/",
            "django index link=/app/other/ script=/app",
        ),
        ("django-app.test", "/app/other/", "django other"),
    ];
    for (host, path, want) in cases {
        let r = get(server.addr, host, path).await;
        assert_eq!((r.status, r.text().as_str()), (200, want), "{host}{path}");
    }
    // Outside the mount, the site's static files.
    assert_eq!(
        get(server.addr, "flask-app.test", "/robots.txt")
            .await
            .text(),
        "static\n"
    );
    // A form POST through the router to Flask.
    let mut c = common::Client::connect(server.addr).await;
    let req = http::Request::post("/app/form")
        .header("host", "flask-app.test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"name=polyhost",
        )))
        .unwrap();
    assert_eq!(c.send(req).await.text(), "flask form name=polyhost");
    server.stop().await;
}
