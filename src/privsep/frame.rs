//! One message on the supervisor↔router socket: a 4-byte big-endian length,
//! then that many bytes of JSON. JSON rather than a binary format: the
//! messages are few (no per-request traffic), and a frame can be read in a
//! debugger or a log.
//!
//! Invariant: a frame longer than [`MAX_FRAME`] is refused on both ends
//! (the configuration of 10,000 sites with certificates fits well below).

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either end sends or accepts.
pub const MAX_FRAME: usize = 256 << 20;

/// Writes `msg` as one frame.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {} bytes is over the limit of {MAX_FRAME}",
            body.len()
        )));
    }
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame; `Ok(None)` at a clean end of stream (the peer closed
/// between frames).
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes is over the limit of {MAX_FRAME}"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write(&mut a, &vec!["one".to_string()]).await.unwrap();
        write(&mut a, &vec!["two".to_string(), "three".into()])
            .await
            .unwrap();
        drop(a);
        let one: Option<Vec<String>> = read(&mut b).await.unwrap();
        let two: Option<Vec<String>> = read(&mut b).await.unwrap();
        let end: Option<Vec<String>> = read(&mut b).await.unwrap();
        assert_eq!(one.unwrap(), ["one"]);
        assert_eq!(two.unwrap(), ["two", "three"]);
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_without_allocating_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let got: std::io::Result<Option<String>> = read(&mut b).await;
        assert!(got.unwrap_err().to_string().contains("over the limit"));
    }
}
