//! The script resolution against real files: decoding as a PHP site
//! reads paths, path info, the holes, and nothing remembered.

use std::borrow::Cow;
use std::path::Path;

use super::*;

/// The root at `path`, opened once per test thread and kept, as a site
/// keeps it: lookups see its kept handle, as requests do.
fn docroot(path: &Path) -> DocRoot {
    thread_local! {
        static ROOTS: std::cell::RefCell<Vec<DocRoot>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    ROOTS.with_borrow_mut(|roots| {
        if let Some(root) = roots.iter().find(|r| r.path() == path) {
            return root.clone();
        }
        let root = DocRoot::open(path, docroot::Reader::Anyone).expect("the test's root opens");
        roots.push(root.clone());
        root
    })
}

/// [`find`]'s target alone.
fn resolve(root: &Path, raw_path: &str, rules: &Rules) -> Result<Target, UpstreamError> {
    find(&docroot(root), raw_path, rules).map(|found| found.target)
}

/// [`find_cached`]'s target alone.
fn resolve_cached(
    root: &Path,
    raw_path: &str,
    rules: &Rules,
) -> Option<Result<Target, UpstreamError>> {
    find_cached(&docroot(root), raw_path, rules).map(|found| found.map(|found| found.target))
}

/// The one decoder as a PHP site reads a path, with the leading `/`
/// kept (as the decoder this module had before `docroot`'s).
fn decode(raw: &str) -> Result<Cow<'_, str>, UpstreamError> {
    let path = docroot::decode_for(raw, Reading::Script)?;
    Ok(if raw.get(1..) == Some(path.as_str()) {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(format!("/{}", path.as_str()))
    })
}

/// Where the decoder finds the first dotfile of a decoded path.
fn hidden_from(rel: &str) -> Option<usize> {
    docroot::decode_for(&format!("/{rel}"), Reading::Script)
        .unwrap()
        .hidden_at()
}

fn rules(front_controller: Option<&str>) -> Rules {
    Rules {
        front_controller: front_controller.map(str::to_owned),
        extensions: vec![".php".to_owned()],
    }
}

fn check(raw: &str, want: Result<&str, u16>) {
    match (decode(raw), want) {
        (Ok(got), Ok(want)) => assert_eq!(got, want, "{raw}"),
        (Err(e), Err(status)) => assert_eq!(e.status().as_u16(), status, "{raw}: {e}"),
        (got, want) => panic!("{raw}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn decoding() {
    check("/a%20b.php", Ok("/a b.php"));
    check("/%2e%2e/etc/passwd", Err(403));
    check("/a/../b", Err(403));
    check("/a/%2E/b", Err(403));
    // Dotfiles are the resolver's (they may be path info).
    check("/.env", Ok("/.env"));
    check("/.well-known/x", Ok("/.well-known/x"));
    check("/a%2fb", Err(400));
    check("/a%5Cb", Err(400));
    check("/a\\b", Err(400));
    check("/x.php%00.txt", Err(400));
    check("/%25252e", Ok("/%252e")); // decoded once only
    check("/%ff", Err(400));
    check("//x", Ok("/x")); // empty segments collapsed
    check("/a%2f..", Err(403)); // a traversal first, whatever hides it
    check("/%5c..", Err(403));
    check("/a%2Fb", Err(400));
    check("/a%2", Ok("/a%2")); // an incomplete escape stays as it is
    check("/%C3%A9t%C3%A9.php", Ok("/été.php"));
    assert!(matches!(decode("/plain/path.php"), Ok(Cow::Borrowed(_))));
}

#[test]
fn resolving() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("plain")).unwrap();
    std::fs::create_dir_all(root.join("dir.php")).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("a.php"), "<?php").unwrap();
    std::fs::write(root.join("A.PHP"), "<?php").unwrap();
    std::fs::write(root.join("index.php"), "<?php").unwrap();
    std::fs::write(root.join("sub/index.php"), "<?php").unwrap();
    std::fs::write(root.join("dir.php/in.php"), "<?php").unwrap();
    std::fs::write(root.join("dir.php/img.jpg"), "x").unwrap();
    std::fs::write(root.join(".git/x.php"), "<?php").unwrap();
    std::fs::write(root.join("img.jpg"), "x").unwrap();
    std::fs::write(outside.join("evil.php"), "<?php").unwrap();
    std::os::unix::fs::symlink(outside.join("evil.php"), root.join("evil.php")).unwrap();
    std::os::unix::fs::symlink("../outside/evil.php", root.join("rel.php")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("outdir.php")).unwrap();
    std::os::unix::fs::symlink("a.php", root.join("inside.php")).unwrap();
    nix::unistd::mkfifo(&root.join("pipe.php"), nix::sys::stat::Mode::S_IRWXU).unwrap();

    let s = |rel: &str, path_info: &str| {
        Ok(Target::Script {
            script_name: format!("/{rel}"),
            path_info: path_info.to_owned(),
        })
    };
    let fc = Some("index.php");
    let cases: Vec<(&str, Option<&str>, Result<Target, u16>)> = vec![
        ("/a.php", None, s("a.php", "")),
        ("/inside.php", None, s("inside.php", "")),
        ("/", None, s("index.php", "")),
        ("/sub/", None, s("sub/index.php", "")),
        ("/sub", None, Ok(Target::AddSlash)),
        ("/plain/", None, Ok(Target::Static)),
        ("/img.jpg", None, Ok(Target::Static)),
        ("/A.PHP", None, Err(403)),
        ("/pipe.php", None, Err(403)), // not a regular file
        ("/evil.php", None, Err(403)),
        ("/rel.php", None, Err(403)),
        ("/missing.php", fc, Ok(Target::NotFound)),
        ("/pretty/url", fc, s("index.php", "")),
        ("/pretty/url", None, Ok(Target::NotFound)),
        // Path info: the first segment with a PHP ending that is a file.
        ("/a.php/", None, s("a.php", "/")),
        ("/a.php/x/y", None, s("a.php", "/x/y")),
        ("/a.php/x.php", None, s("a.php", "/x.php")),
        ("/a.php/a.php/x", None, s("a.php", "/a.php/x")),
        ("/index.php/Main_Page", fc, s("index.php", "/Main_Page")),
        (
            "/index.php/.NET_Framework",
            None,
            s("index.php", "/.NET_Framework"),
        ),
        ("/a.php/Caf%C3%A9%20x", None, s("a.php", "/Café x")),
        ("/a%2ephp/x", None, s("a.php", "/x")),
        ("/inside.php/x", None, s("inside.php", "/x")),
        ("/dir.php/in.php/x", None, s("dir.php/in.php", "/x")),
        ("/dir.php/img.jpg", None, Ok(Target::Static)),
        ("/dir.php/", None, Ok(Target::Static)),
        ("/sub/index.php/x", None, s("sub/index.php", "/x")),
        // Holes: nothing but a real script beneath the root runs.
        ("/img.jpg/x.php", None, Ok(Target::NotFound)),
        ("/img.jpg/x.php", fc, Ok(Target::NotFound)),
        ("/img.jpg/x.php/y", fc, Ok(Target::NotFound)),
        ("/missing.php/x", fc, Ok(Target::NotFound)),
        ("/A.PHP/x", None, Err(403)),
        ("/a.PHP/x", fc, Ok(Target::NotFound)), // no such file
        ("/evil.php/x", None, Err(403)),
        ("/rel.php/x", fc, Err(403)),
        ("/outdir.php/evil.php", fc, Err(403)),
        ("/pipe.php/x", None, Err(403)),
        ("/.git/x.php/y", None, Err(404)),
        ("/.git/x.php", fc, Err(404)),
        ("/a.php./x", None, Ok(Target::NotFound)),
        ("/a.php./x", fc, s("index.php", "")),
        ("/a.php%20/x", fc, s("index.php", "")),
        ("/a.php/../evil.php", None, Err(403)),
        ("/a.php/%2e%2e/x", None, Err(403)),
        ("/a.php%2fx", None, Err(400)),
        ("/a.php/x%2fy", None, Err(400)),
        ("/a.php%00/x", None, Err(400)),
        ("/a.php/x%00", None, Err(400)),
        ("/a.php//x", None, s("a.php", "/x")),
        ("//a.php", None, s("a.php", "")),
        ("//sub", None, Ok(Target::AddSlash)),
    ];
    for (path, fc, want) in cases {
        let rules = rules(fc);
        let got = resolve(&root, path, &rules).map_err(|e| e.status().as_u16());
        assert_eq!(got, want, "{path} (front controller {fc:?})");
        // Right after, everything it looked at is cached: the
        // non-blocking lookup answers the same. The kernel leaves its
        // lock-free walk (so RESOLVE_CACHED gives up) for a file used as
        // a directory and for `..` in a symlink: those few lookups may
        // take the blocking path. Any rename anywhere on the host during
        // the walk makes it give up too (the kernel's global rename
        // sequence changed), so a busy machine gets a few tries.
        let may_block = path.starts_with("/img.jpg/")
            || path.starts_with("/rel.php")
            || path.starts_with("/outdir.php");
        let answered = (0..20).find_map(|_| {
            let _ = resolve(&root, path, &rules);
            resolve_cached(&root, path, &rules)
        });
        let Some(cached) = answered else {
            assert!(
                may_block,
                "{path}: a lookup just made is answered from the caches (20 tries)"
            );
            continue;
        };
        let cached = cached.map_err(|e| e.status().as_u16());
        assert_eq!(cached, want, "cached: {path} (front controller {fc:?})");
    }
}

#[test]
fn split_points_and_hidden_segments() {
    let ext = [".php".to_owned(), ".phtml".to_owned()];
    let points = |rel: &str| split_points(rel, &ext, rel.len()).collect::<Vec<_>>();
    assert_eq!(points("a.php/b.PHTML/c"), vec![5, 13]);
    assert_eq!(points("a.php"), Vec::<usize>::new());
    assert_eq!(points("a.php/"), vec![5]);
    assert_eq!(points("x/php/y.phpx/z"), Vec::<usize>::new());
    assert_eq!(
        split_points("a.php/.b.php/c", &ext, 6).collect::<Vec<_>>(),
        vec![5]
    );
    assert_eq!(hidden_from("a/.b/c"), Some(2));
    assert_eq!(hidden_from(".env"), Some(0));
    assert_eq!(hidden_from(".well-known/x"), None);
    assert_eq!(hidden_from("a/b"), None);
}

/// What is static was opened here, once: a file for reading, a
/// directory without `index.php` as a directory; a dotfile is hidden
/// (404), also when a script name follows it, and `.well-known` is
/// exempt only at the top.
#[test]
fn static_targets_come_opened_and_dotfiles_follow_the_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("plain")).unwrap();
    std::fs::create_dir_all(root.join("a/.well-known")).unwrap();
    std::fs::create_dir_all(root.join(".well-known")).unwrap();
    std::fs::write(root.join("img.jpg"), "x").unwrap();
    std::fs::write(root.join(".well-known/t"), "x").unwrap();
    std::fs::write(root.join("a/.well-known/t"), "x").unwrap();
    std::fs::write(root.join("a.php"), "<?php").unwrap();
    let found = |path: &str| find(&docroot(root), path, &rules(None));
    let img = found("/img.jpg").unwrap();
    assert_eq!(img.target, Target::Static);
    assert!(matches!(img.opened, Some(Opened::File { ref rel, .. }) if rel == "img.jpg"));
    let plain = found("/plain/").unwrap();
    assert!(matches!(plain.opened, Some(Opened::Dir(ref d)) if d.rel_path() == "plain"));
    assert!(found("/a.php").unwrap().opened.is_none());
    assert!(matches!(
        found("/.well-known/t").unwrap().opened,
        Some(Opened::File { .. })
    ));
    let status = |path: &str| {
        found(path)
            .map(|_| 200)
            .unwrap_or_else(|e| e.status().as_u16())
    };
    assert_eq!(status("/a/.well-known/t"), 404);
    assert_eq!(status("/.env"), 404);
    assert_eq!(status("/.env/x.php"), 404);
    assert_eq!(status("/a.php/.env"), 200); // path info
}

/// Nothing is remembered between requests: a script deleted, replaced
/// by a symlink out of the root, or by a directory is seen as it is now.
#[test]
fn no_stale_answer_after_a_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(dir.path().join("evil.php"), "<?php").unwrap();
    let file = root.join("x.php");
    let both = |path: &str| {
        let blocking = resolve(&root, path, &rules(None)).map_err(|e| e.status().as_u16());
        // A few tries: a rename anywhere on the host makes the lock-free
        // walk give up (see `resolving`).
        let cached = (0..20)
            .find_map(|_| {
                let _ = resolve(&root, path, &rules(None));
                resolve_cached(&root, path, &rules(None))
            })
            .expect("answered from the caches (20 tries)")
            .map_err(|e| e.status().as_u16());
        assert_eq!(blocking, cached, "{path}");
        cached
    };
    std::fs::write(&file, "<?php").unwrap();
    assert!(matches!(both("/x.php"), Ok(Target::Script { .. })));
    assert!(matches!(both("/x.php/y"), Ok(Target::Script { .. })));
    std::fs::remove_file(&file).unwrap();
    assert_eq!(both("/x.php"), Ok(Target::NotFound));
    std::os::unix::fs::symlink(dir.path().join("evil.php"), &file).unwrap();
    assert_eq!(both("/x.php"), Err(403));
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    assert_eq!(both("/x.php"), Ok(Target::Static));
    assert_eq!(both("/x.php/"), Ok(Target::Static));
    assert_eq!(both("/x.php/y"), Ok(Target::NotFound));
}

/// A static asset comes from the root's kept handle, a script's decision
/// from the root opened afresh: after the root is replaced, scripts are
/// decided in the new tree at once, and assets follow within the watcher's
/// delay (`docroot::current`), never from anywhere but one of the two trees.
#[test]
fn a_replaced_root_serves_its_new_assets_and_scripts() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tree = |at: &Path, text: &str, script: &str| {
        std::fs::create_dir_all(at).unwrap();
        std::fs::write(at.join("app.css"), text).unwrap();
        std::fs::write(at.join(script), "<?php").unwrap();
    };
    tree(&root, "old", "old.php");
    let kept = docroot(&root);
    let asset = || match find(&kept, "/app.css", &rules(None)) {
        Ok(Found {
            target: Target::Static,
            opened: Some(Opened::File { mut file, .. }),
            ..
        }) => {
            let mut text = String::new();
            file.read_to_string(&mut text).unwrap();
            text
        }
        other => format!("{other:?}"),
    };
    assert_eq!(asset(), "old");
    let next = dir.path().join("next");
    tree(&next, "new", "new.php");
    std::fs::rename(&root, dir.path().join("previous")).unwrap();
    std::fs::rename(&next, &root).unwrap();
    // Scripts: decided beneath the root as its path names it now.
    assert!(matches!(
        resolve(&root, "/new.php", &rules(None)),
        Ok(Target::Script { .. })
    ));
    assert!(matches!(
        resolve(&root, "/old.php", &rules(None)),
        Ok(Target::NotFound)
    ));
    let start = std::time::Instant::now();
    loop {
        let got = asset();
        if got == "new" {
            break;
        }
        assert_eq!(got, "old", "only the old tree or the new one");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the new app.css not served after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(asset(), "new");
}
