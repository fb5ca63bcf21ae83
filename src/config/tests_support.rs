//! Fixtures for unit tests: validated site configurations with defaults,
//! built directly (no files), for the modules that take a `SiteConfig`; and
//! a whole configuration of static sites loaded from files
//! ([`static_sites`]).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::*;

/// A PHP site with defaults, for unit tests.
pub fn site(root: &str) -> SiteConfig {
    SiteConfig {
        name: SiteName::parse("blog").unwrap(),
        file: "/etc/polyhost/vhosts/blog.toml".into(),
        hosts: vec![HostPattern::parse("blog.test").unwrap()],
        default: false,
        root: Some(root.into()),
        user: Some("blog".into()),
        group: Some("blog".into()),
        limits: Limits {
            memory: None,
            processes: None,
            cpu: None,
            body: DEFAULT_BODY_LIMIT,
        },
        env: BTreeMap::from([("APP_ENV".to_owned(), "prod".to_owned())]),
        static_files: StaticConfig {
            index: vec!["index.html".into()],
            paths: vec![],
            cache_max_age: None,
        },
        php: Some(PhpConfig {
            fpm: None,
            mode: PhpMode::Dynamic,
            start: StartPolicy::OnDemand,
            max_children: 8,
            max_requests: 500,
            idle_timeout: Duration::from_secs(10),
            pool_idle_timeout: None,
            request_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(10),
            front_controller: Some("index.php".into()),
            extensions: vec![".php".into()],
            open_basedir: None,
            ini: BTreeMap::from([
                ("memory_limit".to_owned(), IniValue::Value("128M".into())),
                ("display_errors".to_owned(), IniValue::Flag(false)),
            ]),
        }),
        python: None,
        app: None,
        tls: None,
        sandbox: Default::default(),
        problems: Vec::new(),
    }
}

/// A configuration loaded from files written in `dir`: a main file and one
/// static site per `(name, hosts)`, `hosts` as written in TOML inside the
/// brackets (`"\"a.test\", \"www.a.test\""`), each with its own root.
pub fn static_sites(dir: &std::path::Path, sites: &[(&str, &str)]) -> Config {
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "polyhost.toml",
        "listen = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\nlog_dir = \"log\"\n",
    );
    for (site, hosts) in sites {
        write(&format!("www/{site}/index.html"), site);
        write(
            &format!("vhosts/{site}.toml"),
            &format!("hosts = [{hosts}]\nroot = \"www/{site}\"\n"),
        );
    }
    crate::config::load(&dir.join("polyhost.toml")).unwrap()
}
