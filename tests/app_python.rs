//! A site's own Python server as an `[app]`, against the real binary run as
//! root: a WSGI app on gunicorn (which takes the handed-over socket from
//! `LISTEN_FDS`/`LISTEN_PID` itself; with `--bind fd://3` as well it would
//! take fd 3 twice) with two forked workers, and an ASGI app on uvicorn
//! `--fd 3`. Both as their site users; stopping polyhost leaves none of
//! their processes (gunicorn's workers included).

mod admin_support;
mod app_support;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use app_support::{app_site, field, stop_clean, test_venv, wait_serving, ASGI_APP, WSGI_APP};
use common::{get, Binary, TestConfig, TestUser};

#[tokio::test]
async fn gunicorn_and_uvicorn_take_the_socket_polyhost_hands_them() {
    let venv = test_venv();
    let cfg = TestConfig::new();
    let (ug, uu) = (TestUser::new(), TestUser::new());
    app_site(
        &cfg,
        "gunicorn",
        &ug,
        &[("wsgi_app.py", WSGI_APP)],
        &format!(
            "command = [\"{}\", \"--no-control-socket\", \"--workers\", \"2\", \"wsgi_app:application\"]",
            venv.join("bin/gunicorn").display()
        ),
        &[("FIXTURE_ENV", "gunicorn env")],
        "",
    );
    app_site(
        &cfg,
        "uvicorn",
        &uu,
        &[("asgi_app.py", ASGI_APP)],
        &format!(
            "command = [\"{}\", \"--fd\", \"3\", \"asgi_app:app\"]",
            venv.join("bin/uvicorn").display()
        ),
        &[("FIXTURE_ENV", "uvicorn env")],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;

    let body = wait_serving(&bin, &cfg, "gunicorn.test", "/g", Duration::from_secs(60)).await;
    assert_eq!(field(&body, "server"), "gunicorn", "{body}");
    assert_eq!(field(&body, "uid"), ug.uid.to_string(), "{body}");
    assert_eq!(field(&body, "path"), "/g", "{body}");
    assert!(body.ends_with("env=gunicorn env"), "{body}");
    // Answered by a worker gunicorn forked: its parent is the program polyhost started.
    let mut workers = BTreeSet::new();
    for _ in 0..10 {
        let r = get(bin.addr, "gunicorn.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_ne!(field(&r.text(), "pid"), field(&r.text(), "ppid"));
        workers.insert(field(&r.text(), "ppid").to_owned());
    }
    assert_eq!(workers.len(), 1, "one arbiter: {workers:?}");

    let body = wait_serving(&bin, &cfg, "uvicorn.test", "/u", Duration::from_secs(60)).await;
    assert_eq!(field(&body, "server"), "uvicorn", "{body}");
    assert_eq!(field(&body, "uid"), uu.uid.to_string(), "{body}");
    assert!(body.ends_with("env=uvicorn env"), "{body}");
    stop_clean(bin, &cfg, &[&ug, &uu]).await;
}
