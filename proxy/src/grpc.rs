//! gRPC status codes: which of them count as a failure of the upstream.
//!
//! A gRPC call answers HTTP 200 whatever happened; its outcome is the
//! `grpc-status` field, in the trailers, or in the response head of a
//! trailers-only response. A route's `grpc_failure_codes` (names or numbers)
//! says which statuses are the server's fault; the default is `UNKNOWN,
//! DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS`, the
//! codes that speak of the server rather than the caller's request.
//!
//! gRPC-Web is judged by these rules only when its response head carries
//! a `grpc-status` (a trailers-only answer): otherwise its status is a
//! frame inside the body, which the proxy streams through unread, and the
//! call is judged by its HTTP status ([`is_grpc_content_type`]).

use serde::{Deserialize, Serialize};

use crate::fields::Fields;

/// The canonical codes, by number.
pub const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `UNKNOWN`: what a client makes of a response that ends without a status.
pub const UNKNOWN: u32 = 2;

/// One entry of `grpc_failure_codes`: a name (`INTERNAL`) or a number (`13`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CodeRef {
    Number(u64),
    Name(String),
}

impl CodeRef {
    fn resolve(&self) -> Result<u32, String> {
        match self {
            CodeRef::Number(n) if (*n as usize) < NAMES.len() => Ok(*n as u32),
            CodeRef::Number(n) => Err(format!(
                "{n} is not a gRPC status code; use 0-16 or one of {}",
                NAMES.join(", ")
            )),
            CodeRef::Name(name) => NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(name.trim()))
                .map(|i| i as u32)
                .ok_or_else(|| {
                    format!(
                        "`{name}` is not a gRPC status code; use one of {} (or 0-16)",
                        NAMES.join(", ")
                    )
                }),
        }
    }
}

/// A set of gRPC status codes, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Codes(u32);

impl Default for Codes {
    fn default() -> Self {
        Self::from_numbers(&[2, 4, 12, 13, 14, 15])
    }
}

impl Codes {
    pub fn from_numbers(codes: &[u32]) -> Self {
        Self(codes.iter().fold(0, |mask, c| mask | (1 << c)))
    }

    /// Resolves a config list; errors name the entry's index and what is allowed.
    pub fn resolve(list: &[CodeRef]) -> Result<Self, Vec<(usize, String)>> {
        let mut mask = 0u32;
        let mut errors = Vec::new();
        for (i, c) in list.iter().enumerate() {
            match c.resolve() {
                Ok(n) => mask |= 1 << n,
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            Ok(Self(mask))
        } else {
            Err(errors)
        }
    }

    pub fn contains(self, code: u32) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }
}

/// Whether a response is a gRPC one whose status comes in HTTP trailers
/// (see [`is_grpc_content_type`]).
pub fn is_grpc(fields: &dyn Fields) -> bool {
    fields
        .first("content-type")
        .is_some_and(is_grpc_content_type)
}

/// Whether a `content-type` value is gRPC's: `application/grpc`, alone or
/// with a `+format` suffix or parameters (`application/grpc+proto`).
///
/// gRPC-Web (`application/grpc-web`, `-web+proto`, `-web-text`) is not: it
/// carries its `grpc-status` inside the body, in a trailer frame, not in
/// HTTP trailers, so read as gRPC every call of it would end "without a
/// status" and count as `UNKNOWN`, a failure. Its calls are judged by
/// their HTTP status, as plain HTTP is.
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(
            value.get(GRPC.len()),
            None | Some(b'+' | b';' | b' ' | b'\t')
        )
}

/// Whether a `content-type` value is gRPC-Web's (`application/grpc-web`,
/// `-web+proto`, `-web-text`, ...).
pub fn is_grpc_web_content_type(value: &[u8]) -> bool {
    const GRPC_WEB: &[u8] = b"application/grpc-web";
    value.len() >= GRPC_WEB.len() && value[..GRPC_WEB.len()].eq_ignore_ascii_case(GRPC_WEB)
}

/// The `grpc-status` of a header block, if it has one. A value that is not a
/// number counts as `UNKNOWN`, as clients read it.
pub fn status(fields: &dyn Fields) -> Option<u32> {
    fields.first("grpc-status").map(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(UNKNOWN)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_and_bad_ones_are_named() {
        let codes = Codes::resolve(&[
            CodeRef::Name("internal".into()),
            CodeRef::Number(14),
            CodeRef::Name("NOT_FOUND".into()),
        ])
        .unwrap();
        assert!(codes.contains(13) && codes.contains(14) && codes.contains(5));
        assert!(!codes.contains(0) && !codes.contains(2));
        let errors = Codes::resolve(&[
            CodeRef::Name("OK".into()),
            CodeRef::Name("BROKEN".into()),
            CodeRef::Number(17),
        ])
        .unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].0, 1);
        assert!(errors[0].1.contains("`BROKEN` is not a gRPC status code"));
        assert!(errors[0].1.contains("UNAVAILABLE"));
        assert_eq!(errors[1].0, 2);
    }

    #[test]
    fn the_default_set_is_the_server_side_codes() {
        let d = Codes::default();
        let failing: Vec<&str> = (0..17)
            .filter(|c| d.contains(*c))
            .map(|c| NAMES[c as usize])
            .collect();
        assert_eq!(
            failing,
            [
                "UNKNOWN",
                "DEADLINE_EXCEEDED",
                "UNIMPLEMENTED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS"
            ]
        );
    }

    #[test]
    fn grpc_web_is_not_judged_by_grpc_status() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "application/grpc; charset=utf-8",
            "Application/GRPC+proto",
        ] {
            assert!(is_grpc_content_type(grpc.as_bytes()), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
            "application/grpcx",
            "application/json",
            "",
        ] {
            assert!(!is_grpc_content_type(other.as_bytes()), "{other}");
            assert_eq!(
                is_grpc_web_content_type(other.as_bytes()),
                other.starts_with("application/grpc-web"),
                "{other}"
            );
        }
    }

    #[test]
    fn status_is_read_from_a_header_block() {
        let mut h = http::HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert("grpc-status", "13".parse().unwrap());
        assert_eq!(status(&h), Some(13));
        h.insert("grpc-status", "oops".parse().unwrap());
        assert_eq!(status(&h), Some(UNKNOWN));
    }
}
