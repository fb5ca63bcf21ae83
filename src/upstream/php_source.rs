//! PHP source: which file names hold it. Shared by the PHP upstream (what
//! is executed, what refused) and the static upstream of every site, PHP or
//! not, which never sends PHP source as text: a site whose PHP was switched
//! off (or that never had any) must not publish `wp-config.php` and its
//! database password.
//!
//! Invariant: a name is PHP source when it ends in one of [`PHP_SOURCE`] or
//! of the site's `php.extensions`, in any letter case, or in one of those
//! followed by one of [`BACKUP`].

/// Name endings of PHP source that no site serves as a file: scripts, of
/// other PHP versions and conventions too (which a server elsewhere would
/// have executed), include files, PHAR archives, highlighted source. On a
/// PHP site they are refused unless listed in `php.extensions` (then
/// executed).
pub const PHP_SOURCE: [&str; 12] = [
    ".php", ".php3", ".php4", ".php5", ".php7", ".php8", ".pht", ".phtml", ".phar", ".phps",
    ".phpt", ".inc",
];

/// Endings editors and people leave on copies of a file
/// (`wp-config.php~`, `config.php.bak`): a copy of PHP source is refused too.
pub const BACKUP: [&str; 5] = ["~", ".bak", ".old", ".orig", ".save"];

/// What a file name means to PHP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhpName {
    /// Not PHP source: served as a static file.
    Not,
    /// Ends in one of the site's `php.extensions`, letter case and all: executed.
    Script,
    /// PHP source that is not executed: refused.
    Source,
}

/// What `name` (a file name, no `/`) is on a site whose `php.extensions`
/// are `extensions`.
pub fn php_name(name: &str, extensions: &[String]) -> PhpName {
    let (stem, backup) = match BACKUP.iter().find(|b| ends_with_ignore_case(name, b)) {
        // The ending is ASCII: cutting it leaves a char boundary.
        Some(b) => (&name[..name.len() - b.len()], true),
        None => (name, false),
    };
    let Some(dot) = stem.rfind('.') else {
        return PhpName::Not;
    };
    let ext = &stem[dot..];
    if !backup && extensions.iter().any(|e| e == ext) {
        return PhpName::Script;
    }
    let source = PHP_SOURCE
        .iter()
        .copied()
        .chain(extensions.iter().map(String::as_str))
        .any(|e| ext.eq_ignore_ascii_case(e));
    if source {
        PhpName::Source
    } else {
        PhpName::Not
    }
}

/// Whether `name` (a file name, no `/`) is PHP source for a site whose
/// `php.extensions` are `extensions` (none for a site without PHP).
pub fn is_php_source(name: &str, extensions: &[String]) -> bool {
    php_name(name, extensions) != PhpName::Not
}

/// `s` ends in `suffix`, ASCII letters in any case.
pub fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    let (s, suffix) = (s.as_bytes(), suffix.as_bytes());
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_source_names() {
        use PhpName::*;
        let default = [".php".to_owned()];
        let phtml = [".php".to_owned(), ".phtml".to_owned()];
        let cases: &[(&str, &[String], PhpName)] = &[
            ("index.php", &default, Script),
            ("INDEX.PHP", &default, Source),
            ("a.b.php", &default, Script),
            ("x.phtml", &default, Source),
            ("x.phtml", &phtml, Script),
            ("x.PHTML", &phtml, Source),
            ("x.php5", &default, Source),
            ("x.Php7", &default, Source),
            ("lib.phar", &default, Source),
            ("db.inc", &default, Source),
            ("db.INC", &default, Source),
            ("t.phpt", &default, Source),
            ("s.phps", &default, Source),
            ("o.pht", &default, Source),
            ("wp-config.php~", &default, Source),
            ("wp-config.php.bak", &default, Source),
            ("x.phtml.orig", &phtml, Source),
            ("config.inc.save", &default, Source),
            ("style.css", &default, Not),
            ("notes.txt~", &default, Not),
            ("x.php.txt", &default, Not),
            ("archive.bak", &default, Not),
            ("php", &default, Not),
            ("x.phpx", &default, Not),
            ("été.php", &default, Script),
        ];
        for (name, extensions, want) in cases {
            assert_eq!(
                php_name(name, extensions),
                *want,
                "{name} with {extensions:?}"
            );
        }
    }

    #[test]
    fn without_php_every_php_ending_is_source() {
        for name in [
            "config.php",
            "WP-CONFIG.PHP",
            "x.Php5",
            "db.inc",
            "x.phtml",
            "a.php~",
            "b.php.bak",
        ] {
            assert!(is_php_source(name, &[]), "{name}");
        }
        for name in [
            "index.html",
            "notes.txt~",
            "php",
            "x.php.txt",
            "archive.bak",
            "x.phpx",
        ] {
            assert!(!is_php_source(name, &[]), "{name}");
        }
        // A site's own endings count, in any case.
        let tpl = [".php".to_owned(), ".tpl".to_owned()];
        assert!(is_php_source("page.TPL", &tpl) && !is_php_source("page.tpl", &[]));
    }
}
