//! Decoding rules as a table, and the resolver against real files.

use std::fs;
use std::os::unix::fs::symlink;

use super::*;

#[derive(Debug)]
enum Want {
    /// Decodes to this relative path (trailing slash flag).
    Ok(&'static str, bool),
    Forbidden,
    NotFound,
    BadRequest,
}

fn check(raw: &str, want: Want) {
    let got = decode(raw);
    let ok = match (&got, &want) {
        (Ok(rel), Want::Ok(path, slash)) => rel.as_str() == *path && rel.trailing_slash() == *slash,
        (Err(ResolveError::Forbidden(_)), Want::Forbidden) => true,
        (Err(ResolveError::NotFound), Want::NotFound) => true,
        (Err(ResolveError::BadRequest(_)), Want::BadRequest) => true,
        _ => false,
    };
    assert!(ok, "decode({raw:?}) = {got:?}, want {want:?}");
}

#[test]
fn decoding_table() {
    use Want::*;
    let cases = [
        ("/", Ok("", true)),
        ("/index.html", Ok("index.html", false)),
        ("/a/b/", Ok("a/b", true)),
        ("//a///b", Ok("a/b", false)),
        ("/hello%20world.txt", Ok("hello world.txt", false)),
        ("/caf%C3%A9", Ok("café", false)),
        ("/%zz", Ok("%zz", false)),
        // Double-encoded: decoded once only, to a literal (nonexistent) name.
        ("/%252e%252e/etc/passwd", Ok("%2e%2e/etc/passwd", false)),
        ("/a%252fb", Ok("a%2fb", false)),
        // Traversal, raw and encoded, any case.
        ("/../etc/passwd", Forbidden),
        ("/a/../../etc/passwd", Forbidden),
        ("/%2e%2e/%2e%2e/etc/passwd", Forbidden),
        ("/%2E%2e/x", Forbidden),
        ("/.%2e/x", Forbidden),
        ("/a/..", Forbidden),
        ("/./x", Forbidden),
        ("/%2e/x", Forbidden),
        ("/a/.", Forbidden),
        // Encoded slashes are refused (400), not interpreted; one in front
        // of a dot segment counts as a separator: a traversal (403).
        ("/a/%2f..%2f..%2fetc/passwd", Forbidden),
        ("/a%2Fb", BadRequest),
        // Backslashes, raw or encoded: the same.
        ("/..\\..\\etc\\passwd", Forbidden),
        ("/%5c..%5cetc", Forbidden),
        ("/a\\b", BadRequest),
        // NUL, raw or encoded.
        ("/a%00.txt", BadRequest),
        ("/%00", BadRequest),
        // Dotfiles are not found; a traversal after one is still forbidden.
        ("/.env", NotFound),
        ("/.git/config", NotFound),
        ("/sub/.htaccess", NotFound),
        ("/%2egit/config", NotFound),
        ("/...", NotFound),
        ("/.git/../x", Forbidden),
        // .well-known is served, but only at the top and not its dotfiles.
        (
            "/.well-known/acme-challenge/tok",
            Ok(".well-known/acme-challenge/tok", false),
        ),
        ("/.well-known/", Ok(".well-known", true)),
        ("/a/.well-known/x", NotFound),
        ("/.well-known/.secret", NotFound),
        // Malformed.
        ("", BadRequest),
        ("*", BadRequest),
        ("a/b", BadRequest),
        ("/%ff%fe", BadRequest),
    ];
    for (raw, want) in cases {
        check(raw, want);
    }
}

#[test]
fn check_relative_applies_the_same_rules() {
    assert_eq!(check_relative("index.php").unwrap().as_str(), "index.php");
    assert_eq!(
        check_relative("/sub/app.php").unwrap().as_str(),
        "sub/app.php"
    );
    assert!(matches!(
        check_relative("../x.php"),
        Err(ResolveError::Forbidden(_))
    ));
    assert!(matches!(
        check_relative("a/.hidden.php"),
        Err(ResolveError::NotFound)
    ));
    assert!(matches!(
        check_relative("a\0.php"),
        Err(ResolveError::BadRequest(_))
    ));
    // Already decoded: a `%` is a literal character.
    assert_eq!(check_relative("%2e%2e/x").unwrap().as_str(), "%2e%2e/x");
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("site");
    let outside = tmp.path().join("other-site");
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::create_dir_all(outside.join("private")).unwrap();
    fs::write(root.join("a.txt"), "inside").unwrap();
    fs::write(root.join("dir/index.html"), "<p>index</p>").unwrap();
    fs::write(outside.join("secret.txt"), "SECRET").unwrap();
    fs::write(outside.join("private/key.txt"), "SECRET").unwrap();
    symlink(outside.join("secret.txt"), root.join("escape.txt")).unwrap();
    symlink(outside.join("private"), root.join("escape-dir")).unwrap();
    symlink("../../a.txt", root.join("dir/sub/up.txt")).unwrap();
    symlink(
        "../../../other-site/secret.txt",
        root.join("dir/sub/rel-escape.txt"),
    )
    .unwrap();
    symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();
    Fixture {
        _tmp: tmp,
        root,
        outside,
    }
}

fn read(f: OpenFile) -> String {
    fs::read_to_string(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        f.file().as_raw_fd()
    }))
    .unwrap()
}

#[test]
fn resolves_files_and_directories() {
    let fx = fixture();
    let root = DocRoot::open(&fx.root, Reader::Anyone).unwrap();
    match root.resolve("/a.txt").unwrap() {
        Resolved::File(f) => {
            assert_eq!(f.rel_path(), "a.txt");
            assert_eq!(f.path(), fx.root.join("a.txt"));
            assert_eq!(read(f), "inside");
        }
        other => panic!("{other:?}"),
    }
    match root.resolve("/dir").unwrap() {
        Resolved::Dir(d) => {
            assert!(!d.has_trailing_slash());
            let idx = root
                .open_index(&d, &["index.htm".into(), "index.html".into()], Wait::Block)
                .unwrap()
                .unwrap();
            assert_eq!(idx.rel_path(), "dir/index.html");
        }
        other => panic!("{other:?}"),
    }
    match root.resolve("/").unwrap() {
        Resolved::Dir(d) => {
            assert!(d.has_trailing_slash());
            assert!(root
                .open_index(&d, &["index.html".into()], Wait::Block)
                .unwrap()
                .is_none());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        root.resolve("/a.txt/"),
        Err(ResolveError::NotFound)
    ));
    assert!(matches!(
        root.resolve("/missing"),
        Err(ResolveError::NotFound)
    ));
    assert!(matches!(
        root.resolve("/a.txt/x"),
        Err(ResolveError::NotFound)
    ));
}

#[test]
fn symlinks_may_not_leave_the_root() {
    let fx = fixture();
    let root = DocRoot::open(&fx.root, Reader::Anyone).unwrap();
    for path in [
        "/escape.txt",
        "/escape-dir/key.txt",
        "/dir/sub/rel-escape.txt",
        "/magic",
    ] {
        match root.resolve(path) {
            Err(ResolveError::Forbidden(_)) => {}
            other => panic!("{path}: {other:?}"),
        }
    }
    match root.resolve("/dir/sub/up.txt").unwrap() {
        Resolved::File(f) => assert_eq!(read(f), "inside"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        root.resolve_relative("escape.txt"),
        Err(ResolveError::Forbidden(_))
    ));
    assert!(fx.outside.join("secret.txt").exists());
}

#[test]
fn special_files_are_refused_without_blocking() {
    let fx = fixture();
    nix::unistd::mkfifo(
        &fx.root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let root = DocRoot::open(&fx.root, Reader::Anyone).unwrap();
    assert!(matches!(
        root.resolve("/fifo"),
        Err(ResolveError::Forbidden(_))
    ));
    let sock = std::os::unix::net::UnixListener::bind(fx.root.join("sock")).unwrap();
    assert!(matches!(
        root.resolve("/sock"),
        Err(ResolveError::Forbidden(_))
    ));
    drop(sock);
}

#[test]
fn resolve_relative_gives_the_script_path() {
    let fx = fixture();
    let root = DocRoot::open(&fx.root, Reader::Anyone).unwrap();
    let f = root.resolve_relative("dir/index.html").unwrap();
    assert_eq!(f.path(), fx.root.join("dir/index.html"));
    assert!(f.metadata().is_file());
    assert!(matches!(
        root.resolve_relative("dir"),
        Err(ResolveError::NotFound)
    ));
}

#[test]
fn open_fails_for_a_missing_root() {
    let err = DocRoot::open(Path::new("/nonexistent/polyhost-root"), Reader::Anyone).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/polyhost-root"),
        "{err}"
    );
}

/// The one table of verdicts: one answer per rule, whatever reads the path.
#[test]
fn one_table_of_verdicts() {
    use Refusal::*;
    let status = |r: Refusal| match r.verdict() {
        ResolveError::BadRequest(_) => 400,
        ResolveError::Forbidden(_) => 403,
        ResolveError::NotFound => 404,
        other => panic!("{r:?}: {other:?}"),
    };
    let table = [
        (NotAbsolute, 400),
        (DotSegment, 403),
        (EncodedSeparator, 400),
        (NotUtf8, 400),
        (Nul, 400),
        (Backslash, 400),
        (Hidden, 404),
    ];
    for (rule, want) in table {
        assert_eq!(status(rule), want, "{rule:?}");
    }
}

/// A path a file reading refuses is refused alike as a script path (but a
/// dotfile, which a script reading reports: it may be path info).
#[test]
fn both_readings_refuse_alike() {
    let status = |r: Result<RelPath<'_>, ResolveError>| match r {
        Ok(_) => 200,
        Err(ResolveError::BadRequest(_)) => 400,
        Err(ResolveError::Forbidden(_)) => 403,
        Err(e) => panic!("{e:?}"),
    };
    let table = [
        ("/a/%2f..", 403),
        ("/%5c..", 403),
        ("/a\\..\\b", 403),
        ("/%2e%2e%2f%2e%2e%2fetc/passwd", 403),
        ("/.git/../x", 403),
        ("/a%2Fb", 400),
        ("/a%5cb", 400),
        ("/a\\b", 400),
        ("/a%00.txt", 400),
        ("/a\0b", 400),
        ("/%ff", 400),
        ("a", 400),
        ("//a//b/", 200),
    ];
    for (raw, want) in table {
        let file = status(decode_for(raw, Reading::File));
        let script = status(decode_for(raw, Reading::Script));
        assert_eq!((file, script), (want, want), "{raw}");
    }
}

/// A script path keeps what only a script reading allows (a dotfile may be
/// path info; its trailing slash), and `.well-known` is exempt only at the
/// top, as for files.
#[test]
fn a_script_reading_reports_dotfiles_instead_of_refusing_them() {
    let script = |raw| decode_for(raw, Reading::Script);
    let p = script("/index.php/.NET_Framework").unwrap();
    assert_eq!(p.as_str(), "index.php/.NET_Framework");
    assert_eq!(p.hidden_at(), Some(10));
    assert_eq!(script("/.well-known/x").unwrap().hidden_at(), None);
    assert_eq!(script("/a/.well-known/x").unwrap().hidden_at(), Some(2));
    let p = script("/a.php/").unwrap();
    assert_eq!((p.as_str(), p.trailing_slash()), ("a.php/", true));
    // Empty segments are collapsed, as for files; the trailing slash stays.
    assert_eq!(script("/a//b").unwrap().as_str(), "a/b");
    assert_eq!(script("//index.php").unwrap().as_str(), "index.php");
    let p = script("/a.php//x//").unwrap();
    assert_eq!((p.as_str(), p.trailing_slash()), ("a.php/x/", true));
    let p = script("//").unwrap();
    assert_eq!((p.as_str(), p.trailing_slash()), ("", true));
    // Nothing to change: the request's own bytes.
    let raw = "/plain/path.php";
    assert!(std::ptr::eq(
        script(raw).unwrap().as_str().as_ptr(),
        raw[1..].as_ptr()
    ));
}

/// Paths every rule has an opinion on: plain ones, encoded, with empty
/// and dot segments, dotfiles, refused ones.
const SAMPLES: &[&str] = &[
    "/",
    "/a",
    "/a/",
    "/a/b.txt",
    "/a\\b",
    "/a\\..",
    "/a/b/",
    "/.well-known/x",
    "/a/.env",
    "/%61",
    "/a%20b",
    "/%2561",
    "/caf%C3%A9/",
    "/%ff",
    "/a%2fb",
    "//a",
    "/a//b//",
    "/a/./b",
    "/a/../b",
    "/..",
    "/.",
    "/a/%2e%2e",
    "/a?b",
    "/a%3Fb%23c",
    "/[x]{y}|^`",
    "/100%",
    "/%zz",
    "/a%00b",
    // Longer than a vector register, a hit near either end.
    "/wp-content/themes/twentytwentyfour/assets/fonts/inter/Inter-Variable.woff2",
    "/wp-content/themes/twentytwentyfour/assets/fonts/inter/Inter-Variable.woff%",
    "/wp-content/themes/twentytwentyfour/assets/fonts/inter//Inter-Variable.woff2",
    "/wp-content/themes/twentytwentyfour/assets/fonts/inter/.Inter-Variable.woff2",
    "//wp-content/themes/twentytwentyfour/assets/fonts/inter/Inter-Variable.woff2",
    "/%77p-content/themes/twentytwentyfour/assets/fonts/inter/Inter-Variable.woff2",
];

/// A plain path is read as its own bytes (or refused for what it holds):
/// the router matches it without decoding.
#[test]
fn a_plain_path_decodes_to_itself() {
    for raw in SAMPLES {
        let plain = is_plain(raw);
        assert_eq!(
            plain,
            !raw.contains('%') && !raw.contains("//") && !raw.contains("/."),
            "{raw}"
        );
        if let (true, Ok(rel)) = (plain, decode_for(raw, Reading::Script)) {
            assert_eq!(rel.as_str(), &raw[1..], "{raw}");
        }
    }
}

/// A path has a dot segment for the router exactly when the decoder
/// refuses it as one.
#[test]
fn the_router_refuses_dot_segments_as_the_decoder_does() {
    let mut samples: Vec<&str> = SAMPLES.to_vec();
    samples.extend([
        "/a\\..\\b",
        "/a/%2E%2e/b",
        "/a/%2f../b",
        "/api/.",
        "/a/..b",
        "/a.b/.c",
    ]);
    for raw in samples {
        let dot = Refusal::DotSegment.verdict().to_string();
        let decoder = decode_for(raw, Reading::Script)
            .err()
            .map(|e| e.to_string());
        let router = dot_segment_verdict(raw).map(|e| e.to_string());
        assert_eq!(
            router.is_some(),
            decoder.as_ref() == Some(&dot),
            "{raw}: {decoder:?}"
        );
        assert!(router.is_none_or(|r| r == dot), "{raw}");
    }
}

/// A decoded path encoded again decodes to the same path, once more.
#[test]
fn a_decoded_path_encoded_again_decodes_to_itself() {
    for raw in SAMPLES {
        for reading in [Reading::File, Reading::Script] {
            let Ok(rel) = decode_for(raw, reading) else {
                continue;
            };
            let again = rel.to_request_path();
            let back = decode_for(&again, reading).unwrap();
            assert_eq!(back, rel, "{raw} as {reading:?}: {again}");
            assert!(again.parse::<http::uri::PathAndQuery>().is_ok(), "{again}");
            assert_eq!(again.split_once('?'), None, "{again}");
        }
    }
    let rel = decode_for("/%2561/a%20b/caf%C3%A9/", Reading::Script).unwrap();
    assert_eq!(rel.to_request_path(), "/%2561/a%20b/caf%C3%A9/");
}

/// What a fresh root opens becomes servable only once a root's reader
/// admits it.
#[test]
fn what_a_fresh_root_opens_is_admitted_by_the_docroot() {
    let fx = fixture();
    let root = DocRoot::open(&fx.root, Reader::Anyone).unwrap();
    let beneath = fresh(&fx.root, Wait::Block).unwrap();
    let rel = decode_for("/a.txt", Reading::Script).unwrap();
    let opened = beneath.open_rel(&rel).unwrap();
    match root.admit(opened).unwrap() {
        Resolved::File(f) => assert_eq!(read(f), "inside"),
        other => panic!("{other:?}"),
    }
    let dir = decode_for("/dir/", Reading::Script).unwrap();
    assert!(matches!(
        root.admit(beneath.open_rel(&dir).unwrap()).unwrap(),
        Resolved::Dir(d) if d.rel_path() == "dir" && d.has_trailing_slash()
    ));
    assert_eq!(beneath.kind("dir").unwrap(), Some(Kind::Dir));
    assert_eq!(beneath.kind("missing").unwrap(), None);
    assert!(matches!(
        beneath.kind("escape.txt"),
        Err(Fail::Refused(ResolveError::Forbidden(_)))
    ));
}

/// A directory found beneath a root other than the DocRoot's own handle (a
/// PHP lookup's fresh root, here a replacement directory) has its index
/// file opened beneath that same root, never the DocRoot's.
#[test]
fn a_directory_found_beneath_another_root_takes_its_index_from_it() {
    let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (dir, text) in [(&old, "old index"), (&new, "new index")] {
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/index.html"), text).unwrap();
    }
    let root = DocRoot::open(old.path(), Reader::Anyone).unwrap();
    let index = ["index.html".to_owned()];
    let beneath = fresh(new.path(), Wait::Block).unwrap();
    let rel = decode_for("/sub/", Reading::Script).unwrap();
    let Opened::Dir(dir) = beneath.open_rel(&rel).unwrap() else {
        panic!("sub/ is a directory");
    };
    let dir = dir.found_beneath(std::sync::Arc::new(beneath.into_root()));
    let Resolved::Dir(dir) = root.admit(Opened::Dir(dir)).unwrap() else {
        panic!("admitted as a directory");
    };
    let file = root.open_index(&dir, &index, Wait::Block).unwrap().unwrap();
    assert_eq!(read(file), "new index");
    // Found through the DocRoot itself: its own root's index.
    let Resolved::Dir(own) = root.resolve("/sub/").unwrap() else {
        panic!("sub/ is a directory");
    };
    assert_eq!(
        read(root.open_index(&own, &index, Wait::Block).unwrap().unwrap()),
        "old index"
    );
}
