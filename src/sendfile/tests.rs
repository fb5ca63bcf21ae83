//! The queue and the socket writes against real loopback sockets and real
//! files (on the crate's `target/` disk, not a tmpfs: the page-cache probe
//! is tested against a file system that can evict).

use std::io::{IoSlice, Write};
use std::os::fd::AsFd;

use bytes::{Buf, Bytes};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A file under `target/` with `len` bytes of a pattern no range repeats
/// at a stand-in's offset (so a wrong offset shows).
fn patterned(len: usize) -> (tempfile::TempDir, Arc<File>, Vec<u8>) {
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join("f");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    (dir, Arc::new(File::open(&path).unwrap()), data)
}

/// A connected pair: (server side, client side), the server's send buffer
/// small so that writes of a file range come out partial.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    nix::sys::socket::setsockopt(&server.as_fd(), nix::sys::socket::sockopt::SndBuf, &8192)
        .unwrap();
    (server, client)
}

/// Writes `bufs` as hyper's vectored writer does: everything, in order,
/// each slice advanced by what was written. Returns how many writes it took.
async fn write_all_like_hyper(
    files: &FileQueue,
    socket: &TcpStream,
    mut bufs: Vec<Bytes>,
) -> std::io::Result<usize> {
    let mut writes = 0;
    while bufs.iter().any(|b| !b.is_empty()) {
        bufs.retain(|b| !b.is_empty());
        let n = std::future::poll_fn(|cx| {
            let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            match files.poll_write(socket, cx, &slices) {
                Some(polled) => polled,
                None => loop {
                    std::task::ready!(socket.poll_write_ready(cx))?;
                    match socket.try_write_vectored(&slices) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        done => return Poll::Ready(done),
                    }
                },
            }
        })
        .await?;
        writes += 1;
        let mut left = n;
        for b in &mut bufs {
            let step = left.min(b.len());
            b.advance(step);
            left -= step;
        }
    }
    Ok(writes)
}

#[tokio::test]
async fn stand_ins_go_out_as_their_files_bytes_in_order_with_what_surrounds_them() {
    let (_dir, file, data) = patterned(3 * MAX_RANGE + 17);
    let (server, mut client) = pair().await;
    let files = FileQueue::new();
    let bufs = vec![
        Bytes::from_static(b"HEAD"),
        files.push(&file, 5, MAX_RANGE),
        files.push(&file, 5 + MAX_RANGE as u64, 2 * MAX_RANGE),
        Bytes::from_static(b"|middle|"),
        files.push(&file, 3 * MAX_RANGE as u64 - 100, 117),
        Bytes::from_static(b"TAIL"),
    ];
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        got
    });
    let writes = write_all_like_hyper(&files, &server, bufs).await.unwrap();
    drop(server);
    let got = reader.await.unwrap();

    let mut want = b"HEAD".to_vec();
    want.extend_from_slice(&data[5..5 + MAX_RANGE]);
    // The second push was capped at MAX_RANGE.
    want.extend_from_slice(&data[5 + MAX_RANGE..5 + 2 * MAX_RANGE]);
    want.extend_from_slice(b"|middle|");
    want.extend_from_slice(&data[3 * MAX_RANGE - 100..3 * MAX_RANGE + 17]);
    want.extend_from_slice(b"TAIL");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the bytes sent differ from the file's");
    assert!(
        writes > 6,
        "{writes} writes: the small send buffer should split the ranges"
    );
    assert_eq!(files.lock().len(), 0, "every range sent leaves the queue");
}

#[tokio::test]
async fn a_stand_in_out_of_step_with_the_queue_fails_and_sends_nothing() {
    let (_dir, file, _) = patterned(100_000);
    let (server, mut client) = pair().await;
    let files = FileQueue::new();
    let stand_in = files.push(&file, 0, 100_000);
    // Not the queued range's next part: 10 bytes in while none was sent.
    let wrong = vec![stand_in.slice(10..)];
    let err = write_all_like_hyper(&files, &server, wrong)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("out of step"), "{err}");
    // Longer than the range.
    files.clear();
    let _short = files.push(&file, 0, 10);
    let err = write_all_like_hyper(&files, &server, vec![stand_in.clone()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("out of step"), "{err}");
    // Nothing queued at all.
    files.clear();
    let err = write_all_like_hyper(&files, &server, vec![stand_in])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no file range"), "{err}");
    drop(server);
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty(), "{} bytes reached the client", got.len());
}

#[tokio::test]
async fn a_file_that_shrank_fails_the_write_instead_of_sending_less() {
    let (dir, file, _) = patterned(200_000);
    let (server, _client) = pair().await;
    let files = FileQueue::new();
    let stand_in = files.push(&file, 0, 200_000);
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("f"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let err = write_all_like_hyper(&files, &server, vec![stand_in])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}

#[test]
fn the_page_cache_probe_sees_cached_evicted_and_missing_ranges() {
    let (_dir, file, data) = patterned(2 * 1024 * 1024);
    let len = data.len() as u64;
    assert!(
        in_page_cache(&file, 0, len).unwrap(),
        "just written: cached"
    );
    assert!(in_page_cache(&file, len - 1, 1).unwrap());
    assert!(!in_page_cache(&file, 0, len + 1).unwrap(), "past the end");
    file.sync_all().unwrap();
    rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    assert!(
        !in_page_cache(&file, 0, len).unwrap(),
        "evicted (clean pages after fsync and POSIX_FADV_DONTNEED)"
    );
}
