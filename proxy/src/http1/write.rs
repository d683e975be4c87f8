//! Writing heads and chunk framing into a caller's buffer.

use std::time::SystemTime;

use http::{HeaderMap, StatusCode};

/// `HTTP/1.1 code reason` and its line end. Always 1.1, an HTTP/1.0
/// client's answers too: a server sends the highest minor version it
/// conforms to (RFC 9110 §6.2), as nginx and HAProxy do; what the answer
/// may use (chunked coding, keep-alive) still follows the client's version.
pub fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `name: value` and its line end.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `content-length: n` and its line end.
pub fn content_length(out: &mut Vec<u8>, n: u64) {
    field(out, b"content-length", itoa(n, &mut [0; 20]));
}

/// The size line of a chunk of `size` bytes.
pub fn chunk_size_line(out: &mut Vec<u8>, size: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut room = [0u8; 16];
    let mut at = room.len();
    let mut n = size;
    loop {
        at -= 1;
        room[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&room[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, the trailer fields (if any) and the blank line. A
/// field only a head may carry (`Content-Length`, `Host`, hop-by-hop
/// fields; see [`crate::fields::answer_trailer_passes`]) is left out.
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        let name = name.as_str().as_bytes();
        if crate::fields::answer_trailer_passes(name) {
            field(out, name, value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `room`.
pub fn itoa(mut n: u64, room: &mut [u8; 20]) -> &[u8] {
    let mut at = room.len();
    loop {
        at -= 1;
        room[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &room[at..];
        }
    }
}

/// `date: <now>` and its line end.
pub fn date_field(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    with_date(|text| out.extend_from_slice(text.as_bytes()));
    out.extend_from_slice(b"\r\n");
}

/// The date now, as an HTTP/2 `date` field's value.
pub fn date_value() -> http::HeaderValue {
    with_date(|text| http::HeaderValue::from_str(text).expect("an HTTP date is visible ASCII"))
}

/// Calls `with` with the date now in HTTP's form, formatted once a second
/// per thread.
fn with_date<T>(with: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        with(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        for (size, line) in [(0, "0\r\n"), (10, "a\r\n"), (65536, "10000\r\n")] {
            let mut out = Vec::new();
            chunk_size_line(&mut out, size);
            assert_eq!(out, line.as_bytes());
        }
    }

    #[test]
    fn dates_have_the_http_form() {
        let mut out = Vec::new();
        date_field(&mut out);
        let text = String::from_utf8(out).unwrap();
        let value = text.strip_prefix("date: ").unwrap().trim_end();
        assert!(httpdate::parse_http_date(value).is_ok(), "{text}");
    }

    #[test]
    fn status_lines_name_the_version_and_reason() {
        let mut out = Vec::new();
        status_line(&mut out, StatusCode::BAD_GATEWAY);
        status_line(&mut out, StatusCode::from_u16(299).unwrap());
        assert_eq!(out, b"HTTP/1.1 502 Bad Gateway\r\nHTTP/1.1 299 \r\n");
    }
}
