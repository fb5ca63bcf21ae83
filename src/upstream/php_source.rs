//! PHP source: which file names hold it. Shared by the PHP upstream (what
//! is executed, what refused) and the static upstream of every site, PHP or
//! not, which never sends PHP source as text: a site whose PHP was switched
//! off (or that never had any) must not publish `wp-config.php` and its
//! database password.
//!
//! Invariant: a name is PHP source when it ends in one of [`PHP_SOURCE`] or
//! of the site's `php.extensions`, in any letter case; or when one of those
//! endings appears in it followed by anything but a letter or digit (a
//! copy: `x.php~`, `x.php.bak~`, `x.php.save.1`, `.x.php.swp`, `#x.php#`,
//! `x.php-old`, `x.php.txt`), unless its final ending is one of
//! [`RENDERED`].

/// Name endings of PHP source that no site serves as a file: scripts, of
/// other PHP versions and conventions too (which a server elsewhere would
/// have executed), include files, PHAR archives, highlighted source. On a
/// PHP site they are refused unless listed in `php.extensions` (then
/// executed).
pub const PHP_SOURCE: [&str; 12] = [
    ".php", ".php3", ".php4", ".php5", ".php7", ".php8", ".pht", ".phtml", ".phar", ".phps",
    ".phpt", ".inc",
];

/// Final endings after which a PHP ending inside the name does not make it
/// PHP source: web pages and their assets, which no editor, backup tool or
/// package manager leaves on a copy of a file. `index.php.html` is what
/// `wget --adjust-extension` makes of a PHP page when a site is mirrored as
/// static files; `menu.inc.js`, `header.inc.html` and `print.inc.css` are
/// common names of partials. Everything else that follows a PHP ending
/// (`.bak`, `~`, `.1`, `.dist`, `.swp`, `.txt`, `.gz`, ...) is taken for a
/// copy of the source: a deny list of backup endings always misses one.
pub const RENDERED: [&str; 4] = [".html", ".htm", ".css", ".js"];

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
    let endings = PHP_SOURCE
        .iter()
        .copied()
        .chain(extensions.iter().map(String::as_str));
    if let Some(dot) = name.rfind('.') {
        let ext = &name[dot..];
        if extensions.iter().any(|e| e == ext) {
            return PhpName::Script;
        }
        if endings.clone().any(|e| ext.eq_ignore_ascii_case(e)) {
            return PhpName::Source;
        }
        if RENDERED.iter().any(|r| ext.eq_ignore_ascii_case(r)) {
            return PhpName::Not;
        }
    }
    if holds_copy(name, endings) {
        PhpName::Source
    } else {
        PhpName::Not
    }
}

/// One of `endings` (e.g. `.php`, any case) is somewhere in `name` followed
/// by a character that is not an ASCII letter or digit (so `.php5` and
/// `.phps` are endings of their own, `.phpx` none). Every ending starts
/// with a dot (`PHP_SOURCE`; `php.extensions` are validated so), so only
/// the name's dots are tried: most names have one or two, and this runs for
/// every static file served.
fn holds_copy<'a>(name: &str, endings: impl Iterator<Item = &'a str> + Clone) -> bool {
    let name = name.as_bytes();
    name.iter()
        .enumerate()
        .filter(|&(_, &c)| c == b'.')
        .any(|(at, _)| {
            endings.clone().any(|ending| {
                let ending = ending.as_bytes();
                debug_assert!(ending.first() == Some(&b'.'), "an ending starts with a dot");
                name.get(at..at + ending.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(ending))
                    && name
                        .get(at + ending.len())
                        .is_some_and(|c| !c.is_ascii_alphanumeric())
            })
        })
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
            // Copies under any other name a tool or a person gives them.
            ("x.php.bak~", &default, Source),
            ("x.php~.bak", &default, Source),
            ("x.php.save.1", &default, Source),
            (".x.php.swp", &default, Source),
            (".x.php.swo", &default, Source),
            ("#x.php#", &default, Source),
            (".#x.php", &default, Script),
            ("x.php.1", &default, Source),
            ("x.php.dist", &default, Source),
            ("x.php.orig~", &default, Source),
            ("x.PHP.dpkg-old", &default, Source),
            ("x.php-old", &default, Source),
            ("x.php_2024", &default, Source),
            ("x.php (copy)", &default, Source),
            ("x.php.", &default, Source),
            ("x.php.txt", &default, Source),
            ("x.php.tar.gz", &default, Source),
            ("x.php5.bak", &default, Source),
            ("x.phps~", &default, Source),
            ("lib.phar.gz", &default, Source),
            ("db.inc.orig", &default, Source),
            (
                "page.tpl.bak",
                &[".php".to_owned(), ".tpl".to_owned()],
                Source,
            ),
            // A page, a script or a style sheet: rendered, not a copy.
            ("index.php.html", &default, Not),
            ("index.php.HTM", &default, Not),
            ("menu.inc.js", &default, Not),
            ("print.inc.css", &default, Not),
            (
                "x.php.html",
                &[".php".to_owned(), ".html".to_owned()],
                Script,
            ),
            ("x.php.html", &[], Not),
            ("style.css", &default, Not),
            ("notes.txt~", &default, Not),
            ("archive.bak", &default, Not),
            ("php", &default, Not),
            ("php.bak", &default, Not),
            ("x.phpx", &default, Not),
            ("x.phpx.bak", &default, Not),
            ("x.include.bak", &default, Not),
            ("x.incx~", &default, Not),
            ("été.php", &default, Script),
            ("été.php~", &default, Source),
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
            "c.php.bak~",
            "#d.php#",
            "e.php.txt",
        ] {
            assert!(is_php_source(name, &[]), "{name}");
        }
        for name in [
            "index.html",
            "notes.txt~",
            "php",
            "index.php.html",
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
