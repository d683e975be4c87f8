//! Phase 5 of a request, for both protocols: the answer the client gets,
//! from the forward phase's outcome or a refusal. The HTTP/1.1 downstream
//! writes it with the own codec and streams its body; the HTTP/2
//! downstream hands it to hyper.
//!
//! - **A backend's answer** keeps its status and fields, less the
//!   hop-by-hop ones (and those its `Connection` names) and its framing
//!   fields: the body is re-framed for the client (its length when known,
//!   else chunked; a response to HEAD keeps the length a GET would get).
//!   The proxy speaks its own version (RFC 9110 §6.2). A client the
//!   weighted split just placed gets the affinity cookie.
//! - **A 101** reaches a client only when it asked to upgrade to that
//!   protocol ([`upgrade_agrees`]); any other 101 is the backend's error:
//!   502 of kind `protocol`.
//! - **The proxy's own answers** are short texts: 502 (the backend could
//!   not be reached, failed the TLS handshake or broke the exchange) and
//!   504 (it timed out), counted on the backend that failed; 400 or 408
//!   for a client that broke its own body (counted apart, and the
//!   connection closes: what follows cannot be read as framed); 413 and
//!   503 for the proxy's limits (the 503 on no backend's series); 404 and
//!   the refusals of the route phase.
//!   None names an address: the log and the metrics name the backend.

use http::{HeaderValue, StatusCode};

use crate::fields::{ConnectionNames, Fields, has_token};
use crate::forward::Outcome;
use crate::metrics::{ClientErrorKind, UpstreamErrorKind};
use crate::record::{GrpcJudge, MeteredBody, Recorder};
use crate::route::{Refusal, Routed};
use crate::upstream::{Pooled, ResponseHead, h1};

/// The body of every answer.
pub type AnswerBody = MeteredBody<Pooled>;

/// What the client gets.
pub enum Answer {
    /// The backend's answer, passed on.
    Passed(Passed),
    /// An answer the proxy makes itself.
    Local(Local),
}

/// A backend's answer, as the client gets it.
pub struct Passed {
    pub head: ResponseHead,
    pub body: AnswerBody,
    /// The affinity cookie for a client the split just placed.
    pub set_cookie: Option<HeaderValue>,
    /// A 101: the backend's connection, to tunnel to.
    pub tunnel: Option<Box<h1::Conn>>,
}

/// An answer the proxy makes itself: a short text.
pub struct Local {
    pub status: StatusCode,
    /// The answer names the methods the proxy forwards (`Allow`).
    pub allow: bool,
    /// An HTTP/1 connection closes after it.
    pub close: bool,
    pub body: AnswerBody,
}

/// The methods the proxy forwards, for `Allow`.
pub use crate::route::ALLOWED;

impl Local {
    /// A text answer, recorded by `recorder` (its code set to `status`).
    pub fn new(status: StatusCode, text: impl Into<String>, recorder: Option<Recorder>) -> Self {
        let recorder = recorder.map(|r| Recorder {
            code: status.as_u16(),
            ..r
        });
        Self {
            status,
            allow: false,
            close: false,
            body: MeteredBody::text(text, recorder),
        }
    }
}

/// The answer to a request the route phase refused.
pub fn refused(refusal: Refusal) -> Local {
    Local {
        allow: refusal.allow,
        ..Local::new(refusal.status, refusal.text, refusal.recorder)
    }
}

/// The answer to a request whose head the proxy could not read as one
/// (malformed, too large, or framed ambiguously): the connection closes.
pub fn unreadable(status: StatusCode, why: &str) -> Local {
    Local {
        close: true,
        ..Local::new(status, format!("sluice: {why}\n"), None)
    }
}

/// The client's answer for an outcome of the forward phase (None: the
/// client is gone). `offered`: the protocols the request asked to upgrade
/// to.
pub fn answer(outcome: Outcome, routed: &Routed, offered: Option<&[u8]>) -> Option<Answer> {
    let route = &routed.route;
    Some(match outcome {
        Outcome::Gone => return None,
        Outcome::Answered { response, recorder } => {
            let status = response.head.status();
            if status == StatusCode::SWITCHING_PROTOCOLS
                && !offered.is_some_and(|o| upgrade_agrees(o, &response.head))
            {
                tracing::debug!(route = %route.name, "101 to a protocol the request did not offer");
                return Some(Answer::Local(failed(UpstreamErrorKind::Protocol, recorder)));
            }
            let grpc = response.head.grpc_judged().map(|status| GrpcJudge {
                failure_codes: route.grpc_failure_codes,
                status,
            });
            let recorder = Recorder {
                code: status.as_u16(),
                grpc,
                ..recorder
            };
            Answer::Passed(Passed {
                head: response.head,
                body: MeteredBody::new(response.body, Some(recorder))
                    .stall_limit(route.answer_idle_timeout),
                set_cookie: routed.set_cookie.clone(),
                tunnel: response.upgraded,
            })
        }
        Outcome::Failed { kind, recorder } => Answer::Local(failed(kind, recorder)),
        Outcome::ClientFault { kind, detail } => {
            let (status, text) = match kind {
                ClientErrorKind::MalformedBody => (
                    StatusCode::BAD_REQUEST,
                    format!("sluice: the request body is malformed: {detail}\n"),
                ),
                ClientErrorKind::IncompleteBody => (
                    StatusCode::BAD_REQUEST,
                    format!("sluice: the request body was cut short: {detail}\n"),
                ),
                ClientErrorKind::BodyTimeout => (
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "sluice: the request body paused for more than {:?}\n",
                        route.body_idle_timeout
                    ),
                ),
                // Not an answer anyone reads: the client is gone.
                ClientErrorKind::LeftBeforeSent | ClientErrorKind::Protocol => (
                    StatusCode::BAD_REQUEST,
                    "sluice: the client went away\n".to_string(),
                ),
            };
            tracing::debug!(route = %route.name, kind = kind.as_str(), %detail, "the client's request body failed");
            Answer::Local(Local {
                close: true,
                ..Local::new(status, text, None)
            })
        }
        Outcome::TooLarge { recorder } => Answer::Local(Local {
            close: true,
            ..Local::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                crate::route::too_large_text(route.max_body.unwrap_or_default()),
                Some(recorder),
            )
        }),
    })
}

/// The proxy's answer for a backend that failed: 502, or 504 for a
/// timeout, counted as an upstream error of `kind`.
fn failed(kind: UpstreamErrorKind, recorder: Recorder) -> Local {
    recorder.errors.record_upstream_error(kind);
    let (status, what) = crate::forward::failure_status(kind);
    let label = recorder.series.backend().as_str();
    Local::new(
        status,
        format!("sluice: upstream {label} {what}\n"),
        Some(recorder),
    )
}

/// Whether a 101's `Upgrade` names only protocols the request `offered`
/// (any case); a 101 without one agrees to nothing.
pub fn upgrade_agrees(offered: &[u8], response: &dyn Fields) -> bool {
    let tokens = |value: &[u8]| -> Vec<Vec<u8>> {
        value
            .split(|&b| b == b',')
            .map(|t| t.trim_ascii().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let offered = tokens(offered);
    let mut chosen = Vec::new();
    response.values("upgrade", &mut |v| {
        chosen.extend(tokens(v));
        false
    });
    !chosen.is_empty() && chosen.iter().all(|c| offered.contains(c))
}

/// A response field, by what the answer does with it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ResponseField {
    /// Never passed on: `Connection`, `Keep-Alive`, `Proxy-Connection`,
    /// `TE`, `Transfer-Encoding`, `Upgrade` (the body's framing is the
    /// proxy's own; a 101's upgrade is written apart).
    HopByHop,
    ContentLength,
    Date,
    Other,
}

pub fn response_field(name: &[u8]) -> ResponseField {
    const TABLE: [(&[u8], ResponseField); 8] = [
        (b"connection", ResponseField::HopByHop),
        (b"keep-alive", ResponseField::HopByHop),
        (b"proxy-connection", ResponseField::HopByHop),
        (b"te", ResponseField::HopByHop),
        (b"transfer-encoding", ResponseField::HopByHop),
        (b"upgrade", ResponseField::HopByHop),
        (b"content-length", ResponseField::ContentLength),
        (b"date", ResponseField::Date),
    ];
    TABLE
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map_or(ResponseField::Other, |&(_, kind)| kind)
}

/// Calls `emit` with each field of a backend's response head the client
/// gets (`Content-Length` and `Date` included: the writer decides), in
/// order, less the hop-by-hop ones and those its `Connection` names
/// (`connection`: it has such a field).
pub fn each_passed_field<'h>(
    head: &'h dyn Fields,
    connection: bool,
    emit: &mut dyn FnMut(ResponseField, &'h [u8], &'h [u8]),
) {
    let mut named = ConnectionNames::default();
    if connection {
        head.values("connection", &mut |value| {
            named.add_list(value, |_| false);
            false
        });
    }
    head.each(&mut |name, value| {
        let kind = response_field(name);
        // A `Date` the `Connection` names goes too (the proxy then dates
        // the answer itself); a `Content-Length` stays, as the framing.
        let dropped = kind == ResponseField::HopByHop
            || (matches!(kind, ResponseField::Other | ResponseField::Date) && named.lists(name));
        if !dropped {
            emit(kind, name, value);
        }
    });
}

/// Whether a response says `Connection: close`.
pub fn says_close(head: &dyn Fields) -> bool {
    head.values("connection", &mut |v| has_token(v, "close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_101_agrees_only_to_an_offered_protocol() {
        let offered = b"websocket, foo/2";
        let answer = |value: Option<&'static str>| {
            let mut h = http::HeaderMap::new();
            if let Some(v) = value {
                h.insert(http::header::UPGRADE, HeaderValue::from_static(v));
            }
            upgrade_agrees(offered, &h)
        };
        assert!(answer(Some("websocket")));
        assert!(answer(Some("WebSocket")));
        assert!(answer(Some("foo/2")));
        assert!(!answer(Some("h2c")));
        assert!(!answer(Some("websocket, h2c")));
        assert!(!answer(Some("foo")));
        assert!(!answer(None));
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_not_passed_on() {
        let mut h = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-secret, date, content-length"),
            ("x-secret", "1"),
            ("date", "Sat, 05 Dec 2026 17:00:00 GMT"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("x-kept", "yes"),
        ] {
            h.insert(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut passed = Vec::new();
        each_passed_field(&h, true, &mut |_, name, _| {
            passed.push(String::from_utf8_lossy(name).into_owned())
        });
        passed.sort();
        assert_eq!(passed, ["content-length", "x-kept"]);
        assert!(says_close(&h));
    }

    #[test]
    fn every_name_connection_lists_is_dropped_however_many() {
        let mut h = http::HeaderMap::new();
        let mut add = |name: &'static str, value: &'static str| {
            h.append(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        };
        // Seven names over two lines, with empty list elements.
        add("connection", "x-a, ,x-b,X-C");
        add("connection", "x-d,,x-e, x-f , x-g");
        for name in ["x-a", "x-b", "x-c", "x-d", "x-e", "x-f", "x-g", "x-kept"] {
            add(name, "1");
        }
        let mut passed = Vec::new();
        each_passed_field(&h, true, &mut |_, name, _| {
            passed.push(String::from_utf8_lossy(name).into_owned())
        });
        assert_eq!(passed, ["x-kept"]);
    }
}
