//! The FastCGI record layer (responder role, client side): encoding the
//! records polyhost sends and decoding the records php-fpm answers with.
//!
//! Why by hand and not `fastcgi-client` 0.12 (which the field notes
//! recommend): its streaming reader treats an end of file *before*
//! `FCGI_END_REQUEST` as a normal end of the response, so a php-fpm child
//! that dies half-way would be passed on as a complete (truncated) 200 and
//! the dead connection would go back to the pool; it writes the whole request
//! body before reading any response record, so a script that writes more
//! than a socket buffer before reading `php://input` deadlocks until the
//! timeout; and a keep-alive response stream borrows the client, so a
//! `'static` response body cannot own its pooled connection. The protocol
//! part we need is small (below) and fuzzed by the tests at the end.
//!
//! Invariants: [`Decoder`] never panics and never buffers more than one
//! record (at most 8 + 65535 + 255 bytes) beyond what the caller takes out;
//! any input it does not understand is an [`FcgiError`], never a guess.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION_1: u8 = 1;
pub const BEGIN_REQUEST: u8 = 1;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const RESPONDER: u16 = 1;
pub const KEEP_CONN: u8 = 1;
pub const HEADER_LEN: usize = 8;
/// Largest content of one record.
pub const MAX_CONTENT: usize = 0xffff;
/// The one request id polyhost uses: one request per connection at a time.
pub const REQUEST_ID: u16 = 1;

/// php-fpm answered something that is not valid FastCGI for our request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FcgiError {
    #[error("unsupported FastCGI version {0}")]
    Version(u8),
    #[error("record for request id {0}, expected {REQUEST_ID}")]
    RequestId(u16),
    #[error("unexpected FastCGI record type {0}")]
    RecordType(u8),
    #[error("malformed FCGI_END_REQUEST record")]
    EndRequest,
    #[error("php-fpm ended the request with protocol status {0} (1 = cannot multiplex, 2 = overloaded, 3 = unknown role)")]
    ProtocolStatus(u8),
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Stdout(Bytes),
    Stderr(Bytes),
    /// `FCGI_END_REQUEST` with `FCGI_REQUEST_COMPLETE`; carries the app status.
    End(u32),
}

fn header_bytes(kind: u8, content_len: usize, padding: u8) -> [u8; HEADER_LEN] {
    // content_len <= MAX_CONTENT by every caller's construction.
    let [len_hi, len_lo] = (content_len.min(MAX_CONTENT) as u16).to_be_bytes();
    let [id_hi, id_lo] = REQUEST_ID.to_be_bytes();
    [VERSION_1, kind, id_hi, id_lo, len_hi, len_lo, padding, 0]
}

fn header(buf: &mut BytesMut, kind: u8, content_len: usize, padding: u8) {
    buf.put_slice(&header_bytes(kind, content_len, padding));
}

/// `FCGI_BEGIN_REQUEST` for the responder role, asking php-fpm to keep the
/// connection open afterwards.
pub fn begin_request(buf: &mut BytesMut) {
    header(buf, BEGIN_REQUEST, 8, 0);
    buf.put_u16(RESPONDER);
    buf.put_u8(KEEP_CONN);
    buf.put_slice(&[0; 5]);
}

/// Appends `data` as records of `kind` (STDIN or PARAMS), each at most
/// [`MAX_CONTENT`] bytes. Empty `data` appends nothing (use [`end_stream`]).
pub fn stream_records(buf: &mut BytesMut, kind: u8, mut data: &[u8]) {
    while !data.is_empty() {
        let n = data.len().min(MAX_CONTENT);
        let padding = ((8 - n % 8) % 8) as u8;
        header(buf, kind, n, padding);
        buf.put_slice(&data[..n]);
        buf.put_bytes(0, padding as usize);
        data = &data[n..];
    }
}

/// The empty record that ends a PARAMS or STDIN stream.
pub fn end_stream(buf: &mut BytesMut, kind: u8) {
    header(buf, kind, 0, 0);
}

/// The largest name or value a PARAMS pair can carry (31-bit lengths).
pub const MAX_PARAM_LEN: usize = (1 << 31) - 1;

/// Appends the length prefix of a name or value (1 byte below 128, else 4).
pub fn put_param_len(buf: &mut BytesMut, len: usize) {
    if len < 0x80 {
        buf.put_u8(len as u8);
    } else {
        // Callers check len <= MAX_PARAM_LEN.
        buf.put_u32((len.min(MAX_PARAM_LEN) as u32) | 0x8000_0000);
    }
}

/// Appends one name-value pair to the body of a PARAMS stream. A pair
/// whose name or value is 2 GiB or longer is skipped (it cannot be encoded).
pub fn put_param(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    if name.len() > MAX_PARAM_LEN || value.len() > MAX_PARAM_LEN {
        return;
    }
    put_param_len(buf, name.len());
    put_param_len(buf, value.len());
    buf.put_slice(name);
    buf.put_slice(value);
}

/// [`put_param`] with a value given in pieces (written one after the other).
pub fn put_param_parts(buf: &mut BytesMut, name: &[u8], value: &[&[u8]]) {
    let value_len: usize = value.iter().map(|v| v.len()).sum();
    if name.len() > MAX_PARAM_LEN || value_len > MAX_PARAM_LEN {
        return;
    }
    put_param_len(buf, name.len());
    put_param_len(buf, value_len);
    buf.put_slice(name);
    for v in value {
        buf.put_slice(v);
    }
}

/// Appends a whole PARAMS stream (its records and the empty record that
/// ends it) whose body `write` encodes straight into `buf` (with
/// [`put_param`]): one buffer, no intermediate list. The usual case (at most
/// [`MAX_CONTENT`] bytes of parameters) is one record whose header is filled
/// in afterwards; larger bodies are cut into records with one extra copy.
pub fn params_stream(buf: &mut BytesMut, write: impl FnOnce(&mut BytesMut)) {
    let at = buf.len();
    buf.put_bytes(0, HEADER_LEN);
    write(buf);
    let len = buf.len() - at - HEADER_LEN;
    if len == 0 {
        buf.truncate(at);
    } else if len <= MAX_CONTENT {
        let padding = ((8 - len % 8) % 8) as u8;
        buf[at..at + HEADER_LEN].copy_from_slice(&header_bytes(PARAMS, len, padding));
        buf.put_bytes(0, padding as usize);
    } else {
        let content = buf.split_off(at + HEADER_LEN);
        buf.truncate(at);
        stream_records(buf, PARAMS, &content);
    }
    end_stream(buf, PARAMS);
}

/// Incremental decoder of the records php-fpm sends for one request. Feed
/// bytes into [`Decoder::buffer`], take records out with [`Decoder::next`].
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
    done: bool,
}

impl Decoder {
    /// Where the caller reads socket bytes into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// True when no byte of a record is waiting.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// True once `FCGI_END_REQUEST` was decoded.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next complete record, `Ok(None)` when more bytes are needed.
    /// Unknown management records (request id 0) are skipped.
    pub fn next(&mut self) -> Result<Option<Record>, FcgiError> {
        loop {
            if self.done || self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let h = &self.buf[..HEADER_LEN];
            let (version, kind) = (h[0], h[1]);
            let id = u16::from_be_bytes([h[2], h[3]]);
            let content_len = u16::from_be_bytes([h[4], h[5]]) as usize;
            let padding = h[6] as usize;
            if version != VERSION_1 {
                return Err(FcgiError::Version(version));
            }
            if self.buf.len() < HEADER_LEN + content_len + padding {
                self.buf
                    .reserve(HEADER_LEN + content_len + padding - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(HEADER_LEN);
            let content = self.buf.split_to(content_len).freeze();
            self.buf.advance(padding);
            if id == 0 {
                continue; // management record (e.g. FCGI_UNKNOWN_TYPE): not ours
            }
            if id != REQUEST_ID {
                return Err(FcgiError::RequestId(id));
            }
            return match kind {
                STDOUT => Ok(Some(Record::Stdout(content))),
                STDERR => Ok(Some(Record::Stderr(content))),
                END_REQUEST => {
                    if content.len() < 8 {
                        return Err(FcgiError::EndRequest);
                    }
                    let app_status =
                        u32::from_be_bytes([content[0], content[1], content[2], content[3]]);
                    if content[4] != 0 {
                        return Err(FcgiError::ProtocolStatus(content[4]));
                    }
                    self.done = true;
                    Ok(Some(Record::End(app_status)))
                }
                other => Err(FcgiError::RecordType(other)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a record as php-fpm would send it.
    fn record(kind: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
        let mut v = vec![VERSION_1, kind];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&(content.len() as u16).to_be_bytes());
        v.push(padding);
        v.push(0);
        v.extend_from_slice(content);
        v.extend(std::iter::repeat_n(0xAA, padding as usize));
        v
    }

    fn end(app: u32, proto: u8) -> Vec<u8> {
        let mut c = app.to_be_bytes().to_vec();
        c.extend_from_slice(&[proto, 0, 0, 0]);
        record(END_REQUEST, REQUEST_ID, &c, 0)
    }

    fn decode_all(input: &[u8], chunk: usize) -> Result<Vec<Record>, FcgiError> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for part in input.chunks(chunk.max(1)) {
            d.buffer().extend_from_slice(part);
            while let Some(r) = d.next()? {
                out.push(r);
            }
        }
        Ok(out)
    }

    #[test]
    fn decodes_a_response_in_any_split() {
        let mut input = record(STDOUT, 1, b"Status: 200\r\n\r\nhi", 6);
        input.extend(record(0xB, 0, b"\x0b\0\0\0\0\0\0\0", 0)); // FCGI_UNKNOWN_TYPE, ignored
        input.extend(record(STDERR, 1, b"PHP message: x", 2));
        input.extend(record(STDOUT, 1, b"", 0));
        input.extend(end(0, 0));
        for chunk in 1..input.len() + 1 {
            let recs = decode_all(&input, chunk).unwrap();
            assert_eq!(
                recs,
                vec![
                    Record::Stdout(Bytes::from_static(b"Status: 200\r\n\r\nhi")),
                    Record::Stderr(Bytes::from_static(b"PHP message: x")),
                    Record::Stdout(Bytes::new()),
                    Record::End(0),
                ],
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn rejects_what_is_not_ours() {
        let check = |input: Vec<u8>, want: FcgiError| {
            assert_eq!(decode_all(&input, 3), Err(want));
        };
        let mut bad_version = record(STDOUT, 1, b"x", 0);
        bad_version[0] = 2;
        check(bad_version, FcgiError::Version(2));
        check(record(STDOUT, 7, b"x", 0), FcgiError::RequestId(7));
        check(record(PARAMS, 1, b"", 0), FcgiError::RecordType(PARAMS));
        check(record(END_REQUEST, 1, b"\0\0", 0), FcgiError::EndRequest);
        check(end(0, 2), FcgiError::ProtocolStatus(2));
    }

    #[test]
    fn encodes_params_and_streams() {
        let long = [b'v'; 200];
        let mut p = BytesMut::new();
        put_param(&mut p, b"A", b"bc");
        put_param(&mut p, b"LONG", &long);
        assert_eq!(&p[..5], b"\x01\x02Abc");
        assert_eq!(&p[5..10], b"\x04\x80\x00\x00\xc8");
        let mut buf = BytesMut::new();
        stream_records(&mut buf, STDIN, &vec![1u8; MAX_CONTENT + 3]);
        end_stream(&mut buf, STDIN);
        // Two records (padded to 8) and the terminator.
        assert_eq!(buf.len(), 8 + MAX_CONTENT + 1 + 8 + 3 + 5 + 8);
        assert_eq!(&buf[buf.len() - 8..], &[1, STDIN, 0, 1, 0, 0, 0, 0]);
    }

    /// A PARAMS stream written in place equals the same pairs cut into
    /// records by [`stream_records`], for every size around the record limit.
    #[test]
    fn params_streams_in_place_match_cut_records() {
        for value_len in [
            0,
            1,
            7,
            100,
            MAX_CONTENT - 20,
            MAX_CONTENT - 7,
            MAX_CONTENT,
            3 * MAX_CONTENT,
        ] {
            let value = vec![b'x'; value_len];
            let write = |b: &mut BytesMut| {
                put_param(b, b"NAME", &value);
                put_param(b, b"EMPTY", b"");
            };
            let mut body = BytesMut::new();
            write(&mut body);
            let mut want = BytesMut::from(&b"prefix"[..]);
            stream_records(&mut want, PARAMS, &body);
            end_stream(&mut want, PARAMS);
            let mut got = BytesMut::from(&b"prefix"[..]);
            params_stream(&mut got, write);
            assert_eq!(got, want, "value of {value_len} bytes");
        }
        let mut none = BytesMut::new();
        params_stream(&mut none, |_| {});
        assert_eq!(&none[..], &[1, PARAMS, 0, 1, 0, 0, 0, 0]);
    }

    /// Fuzz-style: random bytes, random valid records with random corruption
    /// and random truncation never panic, and decoding stops at the first error.
    #[test]
    fn random_and_truncated_input_never_panics() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..3000 {
            let mut input = Vec::new();
            if round % 3 == 0 {
                let n = (rand() % 512) as usize;
                input.extend((0..n).map(|_| rand() as u8));
            } else {
                for _ in 0..rand() % 6 {
                    let kind = [STDOUT, STDERR, END_REQUEST, rand() as u8][(rand() % 4) as usize];
                    let len = (rand() % 300) as usize;
                    let content: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
                    let id = if rand() % 10 == 0 {
                        rand() as u16
                    } else {
                        REQUEST_ID
                    };
                    input.extend(record(kind, id, &content, (rand() % 8) as u8));
                }
                if !input.is_empty() && rand() % 2 == 0 {
                    let i = (rand() as usize) % input.len();
                    input[i] = rand() as u8;
                }
                let cut = (rand() as usize) % (input.len() + 1);
                input.truncate(cut);
            }
            let chunk = 1 + (rand() % 64) as usize;
            let _ = decode_all(&input, chunk);
        }
    }
}
