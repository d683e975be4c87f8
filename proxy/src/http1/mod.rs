//! Sluice's HTTP/1.1 codec: the bytes of requests and responses, parsed and
//! written by the proxy's own code, on both sides. There is no I/O here: the
//! client's connection ([`crate::downstream::h1`]) and the upstream client
//! ([`crate::upstream::h1`]) read and write the sockets and hand this module
//! bytes.
//!
//! What it refuses, on both sides (a request: 400 and the connection
//! closed, never forwarded; a response: 502 and the upstream connection
//! dropped):
//! - **Heads** ([`head`]): parsed with `httparse`, then held to the RFC 9112
//!   rules `httparse` leaves to its caller. Every line ends in CRLF: a bare
//!   LF or a bare CR anywhere in a head is malformed. No NUL or other
//!   control character but HTAB in a field value, no whitespace between a
//!   field name and its colon, no obs-fold (a line that starts with
//!   whitespace), a request line of exactly `METHOD SP target SP
//!   HTTP/1.x`, a target of visible ASCII with no fragment (`#`). A head
//!   over its limit or
//!   [`head::MAX_FIELDS`] fields is too large (431 for a request).
//! - **Framing** ([`framing`], RFC 9112 §6): `Transfer-Encoding` and
//!   `Content-Length` together, two `Content-Length` values that differ, a
//!   `Content-Length` that is not a decimal number, a `Transfer-Encoding`
//!   on HTTP/1.0 (request or response), a request's that does not end in
//!   `chunked` (a list that ends in `chunked` after other codings is 501:
//!   the proxy decodes none). A response coded other than `chunked` alone
//!   would have to be undone before the proxy re-frames it.
//! - **Chunked bodies** ([`framing::Decoder`]): a chunk size that is not
//!   1 to 16 hex digits (`zz`, `0x5`, `-1`, 18 digits), chunk data not
//!   followed by its line end, a chunk line (size and extensions) over
//!   4 KiB whether it comes in one read or many, a malformed
//!   trailer section. A request's chunk lines end in CRLF; a response's
//!   may end in a bare LF, which nginx and HAProxy accept too (refusing it
//!   would cut bodies those peers deliver).
//!
//! Writing ([`mod@write`]): status lines, fields, chunk framing and `Date`,
//! into a caller's buffer.

pub mod framing;
pub mod head;
pub mod write;

/// A backend's response body that breaks HTTP/1.1's framing after its
/// head went out (a chunk size that is not one): counted as
/// `sluice_upstream_errors_total{kind="protocol"}`, as a malformed head is,
/// not as a reset.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedBody(pub String);
