//! Site identities: which Unix user and group a site's processes run as.
//!
//! Owns the resolution of user and group names into ids and the rule that a
//! site never runs as root: a [`SiteIdentity`] can only be built by
//! [`SiteIdentity::resolve`] or [`SiteIdentity::current`], and both refuse
//! uid 0 and gid 0. [`spawn()`](crate::isolation::spawn()) relies on that invariant.

use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

/// The Unix user and group a site runs as. Never root (uid 0 or gid 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteIdentity {
    /// The user name, as resolved.
    pub user: String,
    pub uid: u32,
    /// The primary group the processes run with (the only group they have).
    pub gid: u32,
    /// The user's home directory from the password database.
    pub home: PathBuf,
}

/// Why a site identity could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("user `{0}` does not exist: create it (e.g. `useradd --system {0}`) or fix the site's `user`")]
    NoSuchUser(String),
    #[error("group `{0}` does not exist: create it or fix the site's `group`")]
    NoSuchGroup(String),
    #[error(
        "user `{0}` has uid 0: polyhost refuses to run a site as root; give the site its own user"
    )]
    RootUser(String),
    #[error("group `{0}` has gid 0: polyhost refuses to run a site as root; give the site its own group")]
    RootGroup(String),
    #[error("looking up `{name}` in the user/group database failed: {source}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
}

impl SiteIdentity {
    /// Resolves `user` (and `group`, or else the user's primary group),
    /// through [`super::userdb`]: the answers of `getpwnam`/`getgrnam`, at
    /// the cost of one read of `/etc/passwd` and `/etc/group` for any
    /// number of sites.
    ///
    /// Refuses uid 0 and gid 0, whatever the names are.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<SiteIdentity, IdentityError> {
        let u = super::userdb::user(user)
            .map_err(|source| IdentityError::Lookup {
                name: user.to_owned(),
                source,
            })?
            .ok_or_else(|| not_found(user, IdentityError::NoSuchUser))?;
        if u.uid == 0 {
            return Err(IdentityError::RootUser(user.to_owned()));
        }
        let (gid, group_name) = match group {
            Some(name) => {
                let gid = super::userdb::group_id(name)
                    .map_err(|source| IdentityError::Lookup {
                        name: name.to_owned(),
                        source,
                    })?
                    .ok_or_else(|| not_found(name, IdentityError::NoSuchGroup))?;
                (gid, name.to_owned())
            }
            None => (u.gid, format!("{} (primary group of {user})", u.gid)),
        };
        if gid == 0 {
            return Err(IdentityError::RootGroup(group_name));
        }
        Ok(SiteIdentity {
            user: u.name,
            uid: u.uid,
            gid,
            home: u.dir,
        })
    }

    /// The identity polyhost itself runs as, for when it is not root: sites
    /// then run as the invoking user (the caller should warn once that sites
    /// are not separated from each other). Refuses root like [`resolve`](Self::resolve).
    pub fn current() -> Result<SiteIdentity, IdentityError> {
        let uid = Uid::effective();
        let gid = Gid::effective();
        let name = uid.to_string();
        let u = User::from_uid(uid)
            .map_err(|source| IdentityError::Lookup {
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| not_found(&name, IdentityError::NoSuchUser))?;
        if uid.is_root() {
            return Err(IdentityError::RootUser(u.name));
        }
        if gid.as_raw() == 0 {
            return Err(IdentityError::RootGroup(gid.to_string()));
        }
        Ok(SiteIdentity {
            user: u.name,
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            home: u.dir,
        })
    }
}

/// A lookup that found nothing: glibc answers "no such entry" also when it
/// could not open the database (out of descriptors: EMFILE, ENFILE), which
/// would blame a user that exists (10,000 sites once all got "user does
/// not exist"). Whether `/etc/passwd` opens tells the two apart.
fn not_found(name: &str, missing: fn(String) -> IdentityError) -> IdentityError {
    classify_not_found(name, std::fs::File::open("/etc/passwd").map(drop), missing)
}

fn classify_not_found(
    name: &str,
    database: std::io::Result<()>,
    missing: fn(String) -> IdentityError,
) -> IdentityError {
    match database {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
            ) =>
        {
            IdentityError::Lookup {
                name: name.to_owned(),
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EMFILE)),
            }
        }
        _ => missing(name.to_owned()),
    }
}

/// Whether polyhost runs as root (effective uid 0), i.e. can switch users
/// and own cgroups. When it cannot, sites run as [`SiteIdentity::current`].
pub fn running_as_root() -> bool {
    Uid::effective().is_root()
}

/// The id of the group named `name` (see [`super::userdb`]).
pub fn group_id(name: &str) -> nix::Result<Option<u32>> {
    super::userdb::group_id(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_user_is_refused() {
        let err = SiteIdentity::resolve("root", None).unwrap_err();
        assert!(matches!(err, IdentityError::RootUser(_)), "{err}");
        assert!(err.to_string().contains("refuses to run a site as root"));
    }

    #[test]
    fn missing_user_and_group_are_named() {
        let err = SiteIdentity::resolve("polyhost-no-such-user-x", None).unwrap_err();
        assert!(matches!(err, IdentityError::NoSuchUser(ref n) if n == "polyhost-no-such-user-x"));
        let err = SiteIdentity::resolve("nobody", Some("polyhost-no-such-group-x")).unwrap_err();
        assert!(matches!(err, IdentityError::NoSuchGroup(_)), "{err}");
    }

    /// Out of descriptors, the lookup of a user that exists reports the
    /// exhaustion, not a missing user. Run in a copy of this test binary
    /// (descriptors are per process): it uses every descriptor first.
    #[test]
    fn out_of_descriptors_is_not_a_missing_user() {
        const CHILD: &str = "POLYHOST_TEST_OUT_OF_DESCRIPTORS";
        if std::env::var_os(CHILD).is_some() {
            let mut held = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                held.push(f);
            }
            let result = SiteIdentity::resolve("nobody", None);
            drop(held);
            match result {
                Err(e) => println!("LOOKUP: {e}"),
                Ok(id) => println!("LOOKUP: resolved {}", id.user),
            }
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "isolation::identity::tests::out_of_descriptors_is_not_a_missing_user",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.split_once("LOOKUP: "))
            .map(|(_, l)| l)
            .unwrap_or_else(|| {
                panic!(
                    "the child printed no LOOKUP line: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        assert!(
            line.contains("Too many open files") && !line.contains("does not exist"),
            "{line}"
        );
    }

    #[test]
    fn gid_zero_is_refused() {
        let err = SiteIdentity::resolve("nobody", Some("root")).unwrap_err();
        assert!(matches!(err, IdentityError::RootGroup(_)), "{err}");
    }

    #[test]
    fn nobody_resolves() {
        let id = SiteIdentity::resolve("nobody", None).unwrap();
        assert_eq!(id.user, "nobody");
        assert_ne!(id.uid, 0);
        assert_ne!(id.gid, 0);
    }
}
