//! Which mount a request path reaches, against the real binary: a mount is
//! chosen on the decoded path the site's files are looked up by
//! (`router::mount`), so a path spelt another way (`/%61pi/x`, `//api/x`)
//! reaches the app mounted at `/api`, never the root's file `ROOT/api/x`;
//! and a `.`/`..` segment reaches neither (403).

mod common;

use common::{
    open_up, pids_of_uid, python_test_site, raw, raw_status, Binary, TestConfig, TestUser,
};

/// The app's own answer for `/api/secret.txt` (pyapp: SCRIPT_NAME, PATH_INFO).
const APP: &str = "script=/api path=/secret.txt ";
const SECRET: &str = "TOP SECRET";

/// `GET target` on a connection of its own: (status, body).
async fn get_raw(bin: &Binary, target: &str) -> (u16, String) {
    let request = format!("GET {target} HTTP/1.1\r\nHost: py.test\r\nConnection: close\r\n\r\n");
    let reply = raw(bin.addr, request.as_bytes()).await;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (raw_status(&reply), body.to_owned())
}

#[tokio::test]
async fn an_app_mount_is_never_bypassed_to_the_files_beneath_it() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_test_site(&cfg, "py", &user, "pyapp", "", "mount = \"/api\"");
    cfg.write("www/py/api/secret.txt", &format!("{SECRET}\n"));
    open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;

    // (target, status, what the body holds): the app with the split it
    // would make of `/api/secret.txt`, or the root's refusal.
    let cases = [
        ("/api/secret.txt", 200, APP),
        ("/%61pi/secret.txt", 200, APP),
        ("/%61%70%69/secret.txt?x=1", 200, APP),
        ("//api/secret.txt", 200, APP),
        ("//api//secret.txt", 200, APP),
        ("/%61pi//secret%2etxt", 200, APP),
        // Decoded once: the name `%61pi`, which the root does not hold.
        ("/%2561pi/secret.txt", 404, ""),
        // A dot segment is refused, for the root's files and the app's
        // paths alike (an app never gets `..` to join to a directory).
        ("/x/../api/secret.txt", 403, ""),
        ("/./api/secret.txt", 403, ""),
        ("/%61pi/./secret.txt", 403, ""),
        ("/api/../api/secret.txt", 403, ""),
        ("/api/%2e%2e/secret.txt", 403, ""),
        ("/api/x\\..\\secret.txt", 403, ""),
        // Outside the mount: the root's files, as before.
        ("/static.txt", 200, "static file"),
    ];
    let mut wrong = Vec::new();
    for (target, status, holds) in cases {
        let (got, body) = get_raw(&bin, target).await;
        if got != status || !body.contains(holds) || body.contains(SECRET) {
            wrong.push(format!(
                "{target}: {got} {body:?}, want {status} with {holds:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", bin.log());
    assert!(bin.terminate().await.success());
    assert!(
        pids_of_uid(user.uid).is_empty(),
        "no worker survives the stop"
    );
    common::check_hygiene(&cfg.path().join("state"));
}
