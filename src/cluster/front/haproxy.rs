//! HAProxy's runtime API (the stats socket at `level admin`, or the master
//! socket, whose commands are sent to worker 1 with `@1`), and the map
//! files on disk.
//!
//! A map is replaced whole and atomically with HAProxy 2.6's versioned
//! maps: `prepare map` (a new, empty version), `add map @V` with the
//! entries as payloads of at most 12 kB, `commit map @V` (the switch). No reload, no window
//! where a host is missing. Hand-written (a line protocol of three
//! commands): no maintained crate speaks HAProxy's runtime API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A failed runtime API call.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("HAProxy runtime API at {socket}: {source} (is HAProxy running with `stats socket {socket} level admin`?)")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused { command: String, answer: String },
}

/// One HAProxy's runtime API.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub socket: PathBuf,
    /// The socket is the master CLI: prefix commands with `@1`.
    pub master: bool,
}

impl Runtime {
    /// Sends one command (non-interactive: HAProxy answers and closes).
    pub async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        let io = |source| HaproxyError::Io {
            socket: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).await.map_err(io)?;
        let line = if self.master {
            format!("@1 {command}\n")
        } else {
            format!("{command}\n")
        };
        stream.write_all(line.as_bytes()).await.map_err(io)?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.map_err(io)?;
        Ok(answer)
    }

    /// Replaces the whole content of the map `map` (its file name as the
    /// HAProxy configuration names it) atomically.
    pub async fn replace_map(
        &self,
        map: &Path,
        entries: &BTreeMap<String, String>,
    ) -> Result<(), HaproxyError> {
        let map = map.display();
        let prepare = format!("prepare map {map}");
        let answer = self.command(&prepare).await?;
        let version = answer
            .split_whitespace()
            .last()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| answer.starts_with("New version created"))
            .ok_or_else(|| refused(&prepare, &answer))?;
        for payload in payloads(entries) {
            let add = format!("add map @{version} {map} <<\n{payload}");
            let answer = self.command(&add).await?;
            if !answer.trim().is_empty() {
                return Err(refused(&format!("add map @{version} {map}"), &answer));
            }
        }
        let commit = format!("commit map @{version} {map}");
        let answer = self.command(&commit).await?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(refused(&commit, &answer))
        }
    }
}

/// The map's lines in payloads of at most [`PAYLOAD_MAX`] bytes: HAProxy
/// reads a command and its payload into one buffer (`tune.bufsize`,
/// 16 kB by default) and drops the connection beyond it.
fn payloads(entries: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = vec![String::new()];
    for line in super::routes::map_text(entries).lines() {
        let last = out.last_mut().expect("one");
        if !last.is_empty() && last.len() + line.len() + 1 > PAYLOAD_MAX {
            out.push(String::new());
        }
        let last = out.last_mut().expect("one");
        last.push_str(line);
        last.push('\n');
    }
    out.retain(|p| !p.is_empty());
    out
}

/// Payload bytes per `add map` (under 16 kB with the command line).
const PAYLOAD_MAX: usize = 12_000;

fn refused(command: &str, answer: &str) -> HaproxyError {
    HaproxyError::Refused {
        command: command.to_owned(),
        answer: answer.trim().to_owned(),
    }
}

/// Writes a map file atomically (a temporary file in the same directory,
/// then a rename), so a restarted HAProxy reads a whole map.
pub fn write_map_file(path: &Path, entries: &BTreeMap<String, String>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, super::routes::map_text(entries).as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_buffer() {
        let entries: BTreeMap<String, String> = (0..2000)
            .map(|i| (format!("site{i}.example.com"), "web-1".to_owned()))
            .collect();
        let chunks = payloads(&entries);
        assert!(chunks.len() > 1);
        assert!(chunks
            .iter()
            .all(|c| c.len() <= PAYLOAD_MAX && c.ends_with('\n')));
        assert_eq!(chunks.concat(), super::super::routes::map_text(&entries));
        assert!(payloads(&BTreeMap::new()).is_empty());
    }
}
