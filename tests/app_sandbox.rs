//! An `[app]` site in its view (`[sandbox] paths`), attacked from its own
//! program, against the real binary run as root: a binary the site built
//! with a run path naming another site's root (`-Wl,-rpath,...`) must not
//! get that root bound into its view. The same binary owned by root shows
//! that run paths are honoured where they should be (a program root
//! installed), so the check is not one that cannot fail.

mod admin_support;
mod app_support;
mod common;

use std::time::Duration;

use app_support::{app_site, error_log, stop_clean};
use common::{Binary, TestConfig, TestUser};

/// Says on stderr whether `argv[1]` can be opened, then exits (a crash
/// loop: the lines land in the site's error log).
const PROBE_C: &str = r#"#include <stdio.h>
int main(int argc, char **argv) {
    FILE *f = argc > 2 ? fopen(argv[1], "r") : NULL;
    fprintf(stderr, "probe %s: %s\n", argc > 2 ? argv[2] : "?", f ? "visible" : "hidden");
    return 3;
}
"#;

#[tokio::test]
async fn a_run_path_in_the_sites_own_program_binds_nothing_of_the_host_into_its_view() {
    if !polyhost::isolation::running_as_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let cfg = TestConfig::outside_tmp();
    let (own, rooted) = (TestUser::new(), TestUser::new());
    // Another site's file, readable by anyone who reaches it: only the
    // view keeps it from a site's code.
    cfg.write("www/victim/secret.txt", "victim's secret\n");
    let victim = cfg.path().join("www/victim");
    let secret = victim.join("secret.txt");
    cfg.write("src/probe.c", PROBE_C);
    for (site, user) in [("own", &own), ("rooted", &rooted)] {
        let program = cfg.path().join(format!("www/{site}/probe"));
        std::fs::create_dir_all(program.parent().unwrap()).unwrap();
        let built = std::process::Command::new("cc")
            .arg("-o")
            .arg(&program)
            .arg(cfg.path().join("src/probe.c"))
            .arg(format!(
                "-Wl,--enable-new-dtags,-rpath,{}",
                victim.display()
            ))
            .output()
            .expect("cc runs");
        assert!(built.status.success(), "{built:?}");
        if site == "own" {
            std::os::unix::fs::chown(&program, Some(user.uid), Some(user.gid())).unwrap();
        }
        app_site(
            &cfg,
            site,
            user,
            &[],
            &format!(
                "command = [\"./probe\", {:?}, \"{site}\"]\nstart = \"eager\"",
                secret.display().to_string()
            ),
            &[],
            "[sandbox]\npaths = []",
        );
    }
    let bin = Binary::start(&cfg.main(), &[]).await;
    for (site, want) in [("own", "hidden"), ("rooted", "visible")] {
        let shown = common::wait_for(
            &format!("the probe's line in {site}.error.log"),
            Duration::from_secs(60),
            async || error_log(&cfg, site),
            |t| t.0.contains(&format!("probe {site}: ")),
        )
        .await;
        assert!(
            shown.0.contains(&format!("probe {site}: {want}")),
            "{site}: the other site's root should be {want} in the view: {}\n{}",
            shown.0,
            bin.log()
        );
    }
    stop_clean(bin, &cfg, &[&own, &rooted]).await;
}
