//! The PHP upstream against a real php-fpm 8.2 master (started by the
//! `php_fpm` fixture as a throw-away user with the config polyhost
//! generates): request shapes, routing, the security rules, request bodies
//! without a length or over the limit, and stderr. The pool under load and
//! failure (streaming with bounded memory, php-fpm dying, timeouts,
//! max_children, recycling, socket permissions) is in `tests/php_pool.rs`.

mod php_fpm;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use polyhost::upstream::{BoxError, RequestBody};

use php_fpm::harness::{body, harness, SECRET};
use php_fpm::SiteOptions;

#[tokio::test]
async fn get_query_post_cookies_headers_and_the_site_user() {
    let h = harness(SiteOptions {
        env: vec![("TRICKY".into(), "p$a\"ss;w=rd ${HOME}".into())],
        ..Default::default()
    });
    let v = h
        .json(
            Request::get("/info.php?a=1&b=two%20words")
                .header("host", "site.test")
                .header("cookie", "c1=v1; c2=v2")
                .header("x-custom", "hello")
                .body(body(""))
                .unwrap(),
        )
        .await;
    assert_eq!(v["get"], serde_json::json!({"a": "1", "b": "two words"}));
    assert_eq!(v["cookie"], serde_json::json!({"c1": "v1", "c2": "v2"}));
    assert_eq!(v["custom"], "hello");
    // (`Proxy` → HTTP_PROXY, httpoxy: removed by the router for every
    // runtime, shown through the router in tests/proxy.rs.)
    assert_eq!(v["uri"], "/info.php?a=1&b=two%20words");
    assert_eq!(v["script"], "/info.php");
    assert_eq!(
        v["path_info"],
        serde_json::Value::Null,
        "no path info, none sent"
    );
    assert_eq!(v["https"], "on");
    assert_eq!(v["remote"], "192.0.2.7");
    assert_eq!(v["server_name"], "site.test");
    assert_eq!(
        v["software"],
        concat!("polyhost/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(v["user"], h.fpm.user.name.as_str());
    assert_eq!(
        v["env"], "p$a\"ss;w=rd ${HOME}",
        "env values reach PHP verbatim"
    );

    let form = "name=J%C3%B6rg&list%5B%5D=1&list%5B%5D=2";
    let v = h
        .json(
            Request::post("/info.php")
                .header("host", "site.test")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("content-length", form.len())
                .body(body(form))
                .unwrap(),
        )
        .await;
    assert_eq!(v["method"], "POST");
    assert_eq!(
        v["post"],
        serde_json::json!({"name": "Jörg", "list": ["1", "2"]})
    );
    // Keep-alive: the connections went back to the pool and were reused.
    assert!(h.upstream.idle_connections() >= 1);
    assert!(h.upstream.idle_connections() <= 4);
    assert_eq!(h.runtime.done.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn status_redirect_head_and_missing_scripts() {
    let h = harness(SiteOptions::default());
    let (status, _, body) = h.get("/status.php").await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::NOT_FOUND, &b"custom not found"[..])
    );

    let (status, headers, _) = h.get("/redirect.php").await.unwrap();
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "/x");

    let req = Request::head("/head.php")
        .header("host", "site.test")
        .body(body_empty())
        .unwrap();
    let (status, headers, body) = h.send(req).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-head"], "yes");
    assert!(body.is_empty(), "HEAD returned a body: {body:?}");

    assert_eq!(h.get("/missing.php").await.unwrap_err().status(), 404);
    assert_eq!(
        h.get("/pretty/url").await.unwrap_err().status(),
        404,
        "no front controller configured"
    );
    // The pool is still healthy after all of that.
    let (status, _, body) = h.get("/dir/").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"dir index"[..]));
}

/// A page of about 150 KiB (php-fpm sends it as a few records of up to
/// 64 KiB, whole or in parts as it writes them) arrives byte for byte, as
/// often as it is asked for on the kept-alive connections.
#[tokio::test]
async fn a_long_page_arrives_intact() {
    let h = harness(SiteOptions::default());
    let want: String = (0..3000)
        .map(|i| format!("line {i:05} {}\n", "abcdefgh".repeat(5)))
        .collect();
    for round in 0..5 {
        let (status, _, body) = h.get("/page.php").await.unwrap();
        assert_eq!(status, 200, "round {round}");
        assert_eq!(body.len(), want.len(), "round {round}");
        assert!(body == want.as_bytes(), "round {round}: the page differs");
    }
}

fn body_empty() -> RequestBody {
    body("")
}

#[tokio::test]
async fn front_controller_directory_index_and_static_files() {
    let h = harness(SiteOptions {
        front_controller: Some("front.php".into()),
        ..Default::default()
    });
    let (status, _, body) = h.get("/pretty/url?page=2").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"front:/pretty/url?page=2|/front.php|");

    let (status, _, body) = h.get("/dir/").await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"dir index"[..]),
        "index.php before index.html"
    );
    let (status, headers, _) = h.get("/dir?q=1").await.unwrap();
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "/dir/?q=1");
    // Empty segments are collapsed: never a protocol-relative redirect.
    let (status, headers, _) = h.get("//dir?q=1").await.unwrap();
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "/dir/?q=1");

    let (status, _, body) = h.get("/style.css").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"static"[..]));
    // A missing .php is a 404 even with a front controller.
    assert_eq!(h.get("/nope.php").await.unwrap_err().status(), 404);
}

#[tokio::test]
async fn the_security_rules_hold() {
    for fc in [None, Some("front.php".to_owned())] {
        let h = harness(SiteOptions {
            front_controller: fc.clone(),
            ..Default::default()
        });
        std::fs::write(h.fpm.outside.join("evil.php"), "<?php echo \"PWNED\";").unwrap();
        std::os::unix::fs::symlink(h.fpm.outside.join("evil.php"), h.fpm.root.join("link.php"))
            .unwrap();
        std::os::unix::fs::symlink("../outside/evil.php", h.fpm.root.join("rel.php")).unwrap();
        std::os::unix::fs::symlink("../outside", h.fpm.root.join("outdir")).unwrap();
        std::fs::write(h.fpm.root.join("X.PHP"), format!("<?php /* {SECRET} */")).unwrap();
        let probes = [
            "/uploads/avatar.jpg/x.php",
            "/uploads/avatar.jpg/x.php/y",
            "/uploads/avatar.jpg%2fx.php",
            "/uploads/avatar.jpg%00.php",
            "/link.php",
            "/rel.php",
            "/outdir/evil.php",
            "/X.PHP",
            "/X.PHP/y",
            "/x.php%00.txt",
            "/x.php.",
            "/x.php%20",
            "/./x.php",
            "/uploads/../x.php",
            "/%2e%2e/outside/evil.php",
            "/.x.php",
        ];
        for uri in probes {
            let what = format!("{uri} (front controller {fc:?})");
            match h.get(uri).await {
                Ok((status, _, body)) => {
                    let text = String::from_utf8_lossy(&body);
                    assert!(
                        !text.contains("PWNED"),
                        "{what}: executed a non-script: {status} {text}"
                    );
                    assert!(
                        !text.contains(SECRET),
                        "{what}: served PHP source: {status} {text}"
                    );
                    if fc.is_some() {
                        assert!(
                            text.starts_with("front:") || status != 200,
                            "{what}: {status} {text}"
                        );
                    } else {
                        assert_ne!(status, 200, "{what}: {text}");
                    }
                }
                Err(e) => assert!(e.status().is_client_error(), "{what}: {e}"),
            }
        }
        let (status, _, body) = h.get("/x.php").await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"x ran"[..]));
        // Path info after a real script runs that script (tests/php_path_info.rs).
        let (status, _, body) = h.get("/x.php/").await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"x ran"[..]));
    }
}

#[tokio::test]
async fn stderr_reaches_the_error_sink() {
    let h = harness(SiteOptions::default());
    let (status, _, body) = h.get("/log.php").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"logged"[..]));
    let errors = h.errors.lock().unwrap().clone();
    assert!(
        errors.iter().any(|l| l.contains("hello from php")),
        "{errors:?}"
    );
}

/// A body in pieces, with no length known up front (like HTTP/1.1 chunked).
fn chunked(parts: &[&str]) -> RequestBody {
    let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = parts
        .iter()
        .map(|p| Ok(http_body::Frame::data(Bytes::copy_from_slice(p.as_bytes()))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

#[tokio::test]
async fn bodies_without_a_length_and_over_the_limit() {
    let h = harness(SiteOptions::default());
    let req = Request::post("/info.php")
        .header("host", "site.test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(chunked(&["a=1&", "b=", "2"]))
        .unwrap();
    let v = h.json(req).await;
    assert_eq!(
        v["post"],
        serde_json::json!({"a": "1", "b": "2"}),
        "a chunked body reaches PHP whole"
    );

    // The router wraps bodies in `Limited`; an overrun is a 413 whether or
    // not the length was declared.
    for declared in [false, true] {
        let limited =
            http_body_util::Limited::new(chunked(&["a=1&", "b=2222222222"]), 8).boxed_unsync();
        let mut req =
            Request::post("/info.php").header("content-type", "application/x-www-form-urlencoded");
        if declared {
            req = req.header("content-length", "16");
        }
        let err = h.send(req.body(limited).unwrap()).await.unwrap_err();
        assert_eq!(
            err.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "declared {declared}: {err}"
        );
    }
    // The pool is fine afterwards.
    let (status, _, _) = h.get("/x.php").await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// An idempotent request's body is read whole before its exchange (then it
/// can be sent again on a fresh connection): with a declared length, and
/// without one (read to its end first). PHP gets it all, each time.
#[tokio::test]
async fn idempotent_bodies_reach_php_whole() {
    let h = harness(SiteOptions::default());
    let cases = [
        ("GET", Some("5"), vec!["hello"]),
        ("GET", None, vec!["hel", "lo"]),
        ("PUT", Some("8"), vec!["put ", "body"]),
        ("DELETE", None, vec![]),
    ];
    for (method, length, parts) in cases {
        let mut req = Request::builder()
            .method(method)
            .uri("/pid.php")
            .header("host", "site.test");
        if let Some(n) = length {
            req = req.header("content-length", n);
        }
        let (status, _, body) = h.send(req.body(chunked(&parts)).unwrap()).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{method} {parts:?}");
        let text = String::from_utf8_lossy(&body);
        let want = format!(" {method} {}", parts.concat());
        assert!(
            text.ends_with(&want),
            "{method} {parts:?}: PHP saw {text:?}, want it to end with {want:?}"
        );
    }
}
