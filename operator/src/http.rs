//! The HTTP calls the control plane makes (proxy admin API, Prometheus,
//! webhooks), each with a timeout and an error that names the URL.
//!
//! # https and credentials
//!
//! Every call may be `http://` or `https://`. https trusts the platform's
//! roots (`rustls-native-certs`) and, per endpoint, a CA bundle of its
//! own. Credentials come from an **access file** (`--access-file`, YAML),
//! a list of endpoints each matched by URL prefix (the longest wins):
//!
//! ```yaml
//! - url: https://prometheus.internal:9443/
//!   ca_file: /etc/sluice/ca.pem              # PEM, added to the platform's roots
//!   bearer_token_file: /etc/sluice/prom-token
//! - url: https://hooks.internal/
//!   basic_auth: { username: sluice, password_file: /etc/sluice/hook-password }
//!   headers: { X-Api-Key: /etc/sluice/api-key }   # each value read from that file
//! ```
//!
//! Files are read once, at start; a missing or empty file, a CA file with
//! no certificate, an unknown field or a URL that is not http(s) is an
//! error naming the entry and the field. Secret values are held as
//! [`Secret`], which prints as `<redacted>`; they go out only in request
//! headers marked sensitive (never indexed by HPACK), and no error, log
//! line or status carries them (a URL's user info is shown as `***`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: `{url}` is not a valid http:// or https:// URL")]
    BadUrl { url: String },
    /// `status`: what the endpoint answered before its body ran over (a
    /// caller that uses no body, a webhook's, judges by it).
    #[error("{url}: the answer is larger than {} MiB; not read", MAX_ANSWER_BYTES / (1024 * 1024))]
    TooLarge { url: String, status: StatusCode },
    /// A header field the caller gives (a webhook's `headers`) that HTTP
    /// does not allow; its value is never shown (it may be a credential).
    #[error("{url}: the header `{name}` has a name or value HTTP does not allow")]
    BadHeader { url: String, name: String },
}

/// The largest answer body read (a webhook's, a metrics provider's, the
/// proxy admin API's): past it the answer is an error, so an endpoint that
/// answers without end cannot take the control plane's memory.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A value that must never be shown: it prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The first line of `path`, trimmed (a trailing newline is not part
    /// of a token). `what` names the setting in the error.
    pub fn from_file(what: &str, path: &Path) -> Result<Self, String> {
        let text = crate::input::read_secret_text(path, crate::input::MAX_SETTINGS_BYTES)
            .map_err(|e| format!("{what}: {e}"))?;
        let value = text.lines().next().unwrap_or_default().trim().to_string();
        if value.is_empty() {
            return Err(format!("{what}: the file it names is empty"));
        }
        Ok(Self(value))
    }

    /// A value got another way (a Secret's key).
    pub fn from_value(value: &str) -> Self {
        Self(value.to_string())
    }

    /// The value, to put in a request (never in a message).
    pub fn expose_for_request(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One entry of the access file, as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFile {
    url: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    basic_auth: Option<BasicAuthFile>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, PathBuf>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthFile {
    username: String,
    password_file: PathBuf,
}

/// How calls to one endpoint prove who makes them.
#[derive(Clone, Debug, Default)]
struct Credentials {
    bearer: Option<Secret>,
    basic: Option<BasicPair>,
    headers: Vec<(HeaderName, Secret)>,
}

/// Basic auth's `user:password`, as the bytes that are base64-encoded:
/// a URL's user info may percent-encode bytes that are not UTF-8 (`%FF`),
/// and Go's net/http (so Flagger) sends those bytes as they are.
#[derive(Clone)]
struct BasicPair(Vec<u8>);

impl BasicPair {
    fn new(user: &[u8], password: &[u8]) -> Self {
        Self([user, b":", password].concat())
    }
}

impl std::fmt::Debug for BasicPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Credentials {
    fn apply(&self, headers: &mut http::HeaderMap) {
        let mut set = |name: HeaderName, value: String| {
            if let Ok(mut value) = HeaderValue::from_str(&value) {
                value.set_sensitive(true);
                headers.insert(name, value);
            }
        };
        if let Some(token) = &self.bearer {
            set(
                header::AUTHORIZATION,
                format!("Bearer {}", token.expose_for_request()),
            );
        }
        if let Some(BasicPair(pair)) = &self.basic {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            set(header::AUTHORIZATION, format!("Basic {encoded}"));
        }
        for (name, value) in &self.headers {
            set(name.clone(), value.expose_for_request().to_string());
        }
    }
}

type Inner = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An endpoint of the access file, ready: its URL prefix, its client
/// (trusting its CA) and its credentials.
#[derive(Clone)]
struct Endpoint {
    /// The entry's URL: calls match by scheme, host and port, then path.
    at: http::Uri,
    client: Inner,
    credentials: Credentials,
}

/// The endpoints every [`HttpClient`] uses (installed once at start).
static ACCESS: OnceLock<Arc<Vec<Endpoint>>> = OnceLock::new();

/// Reads the access file at `path` (see the module docs) and installs it
/// for every client made after. The error names the file, the entry and
/// the field.
pub fn install_access_file(path: &Path) -> Result<(), String> {
    let shown = path.display().to_string();
    let text = crate::input::read_text(path, crate::input::MAX_SETTINGS_BYTES)
        .map_err(|e| format!("--access-file: {e}"))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let endpoints = parse_access(&text, &format!("--access-file: {shown}"), &|file: &str| {
        crate::input::read_secret_file(&base.join(file), crate::input::MAX_SETTINGS_BYTES)
    })?;
    install(endpoints, "--access-file")
}

/// Like [`install_access_file`], from a Kubernetes Secret's data: its key
/// `access.yaml` is the list, and every `*_file` in it names another key
/// of the same Secret (`what` names the Secret in errors).
pub fn install_access_data(
    data: &std::collections::BTreeMap<String, Vec<u8>>,
    what: &str,
) -> Result<(), String> {
    let access = parse_access_data(data, what)?;
    install(access.0.as_ref().clone(), what)
}

/// An access list of one app (`sluice.dev/access`), for
/// [`HttpClient::with_access`].
#[derive(Clone)]
pub struct Access(Arc<Vec<Endpoint>>);

/// Reads an access list from a Secret's data (see
/// [`install_access_data`]) without installing it.
pub fn parse_access_data(
    data: &std::collections::BTreeMap<String, Vec<u8>>,
    what: &str,
) -> Result<Access, String> {
    let text = data
        .get("access.yaml")
        .ok_or_else(|| format!("{what}: no key access.yaml"))?;
    let text =
        std::str::from_utf8(text).map_err(|_| format!("{what}: access.yaml is not UTF-8"))?;
    let endpoints = parse_access(text, &format!("{what} key access.yaml"), &|key: &str| {
        // Never the name: it may be the secret, written in place of a key.
        data.get(key).cloned().ok_or_else(|| {
            "names no key of the Secret; is the secret itself written there? Give the name of a key holding it".to_string()
        })
    })?;
    Ok(Access(Arc::new(endpoints)))
}

fn install(endpoints: Vec<Endpoint>, what: &str) -> Result<(), String> {
    ACCESS
        .set(Arc::new(endpoints))
        .map_err(|_| format!("{what}: access is given twice"))
}

/// A value read with `read` (a file, or a Secret's key): its first line,
/// trimmed; `what` names the field in errors. `read`'s errors never name
/// what they could not find: a secret pasted in place of a file's name
/// would be shown.
fn secret_from(
    read: &dyn Fn(&str) -> Result<Vec<u8>, String>,
    what: &str,
    name: &str,
) -> Result<Secret, String> {
    let bytes = read(name).map_err(|e| format!("{what}: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{what}: {name} is not UTF-8"))?;
    let value = text.lines().next().unwrap_or_default().trim().to_string();
    if value.is_empty() {
        return Err(format!("{what}: {name} is empty"));
    }
    Ok(Secret(value))
}

/// Parses an access list (see the module docs), reading the files it names
/// with `read`; `at` names the source in errors.
fn parse_access(
    text: &str,
    at: &str,
    read: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Vec<Endpoint>, String> {
    // serde's message may quote a value (a password written inline):
    // only where, and what the list may hold.
    let entries: Vec<EndpointFile> = serde_yaml_ng::from_str(text).map_err(|e| {
        let place = e
            .location()
            .map(|l| format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        let field = e
            .to_string()
            .split_once("unknown field `")
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(f, _)| format!(": unknown field `{f}`"))
            .unwrap_or_default();
        format!(
            "{at}: not an access list{place}{field} (a list of {{url, ca_file, bearer_token_file, basic_auth: {{username, password_file}}, headers: {{NAME: FILE}}}}; secrets go in files, never inline)"
        )
    })?;
    let mut endpoints = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let at = format!("{at}: entry {i}");
        let uri: http::Uri = entry
            .url
            .parse()
            .map_err(|_| format!("{at}: url: `{}` is not a URL", shown_url(&entry.url)))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "{at}: url: `{}` is not an http:// or https:// URL",
                shown_url(&entry.url)
            ));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!(
                "{at}: url: `{}` holds user info, which an entry does not use; give basic_auth with a password_file",
                shown_url(&entry.url)
            ));
        }
        if entry.bearer_token_file.is_some() && entry.basic_auth.is_some() {
            return Err(format!(
                "{at}: bearer_token_file and basic_auth both set the Authorization header; give one"
            ));
        }
        let name = |p: &Path| p.to_string_lossy().into_owned();
        let bearer = entry
            .bearer_token_file
            .as_deref()
            .map(|p| secret_from(read, &format!("{at}: bearer_token_file"), &name(p)))
            .transpose()?;
        if let Some(token) = &bearer
            && HeaderValue::from_str(token.expose_for_request()).is_err()
        {
            return Err(format!(
                "{at}: bearer_token_file: holds a byte a header value may not"
            ));
        }
        let basic = match entry.basic_auth {
            Some(b) => {
                if b.username.is_empty() || b.username.contains(':') {
                    return Err(format!(
                        "{at}: basic_auth.username: must be non-empty and hold no `:`"
                    ));
                }
                let password = secret_from(
                    read,
                    &format!("{at}: basic_auth.password_file"),
                    &name(&b.password_file),
                )?;
                if HeaderValue::from_str(password.expose_for_request()).is_err()
                    || HeaderValue::from_str(&b.username).is_err()
                {
                    return Err(format!(
                        "{at}: basic_auth: holds a byte a header value may not"
                    ));
                }
                Some(BasicPair::new(
                    b.username.as_bytes(),
                    password.expose_for_request().as_bytes(),
                ))
            }
            None => None,
        };
        let mut headers = Vec::new();
        for (header_name, file) in &entry.headers {
            let header = HeaderName::from_bytes(header_name.as_bytes())
                .map_err(|_| format!("{at}: headers: `{header_name}` is not a header name"))?;
            let value = secret_from(read, &format!("{at}: headers.{header_name}"), &name(file))?;
            if HeaderValue::from_str(value.expose_for_request()).is_err() {
                return Err(format!(
                    "{at}: headers.{header_name}: {} holds a byte a header value may not",
                    file.display()
                ));
            }
            headers.push((header, value));
        }
        let ca = match &entry.ca_file {
            Some(p) => Some((
                name(p),
                read(&name(p)).map_err(|e| format!("{at}: ca_file: {e}"))?,
            )),
            None => None,
        };
        let client = client_trusting(ca.as_ref().map(|(n, pem)| (n.as_str(), pem.as_slice())))
            .map_err(|e| format!("{at}: ca_file: {e}"))?;
        endpoints.push(Endpoint {
            at: uri,
            client,
            credentials: Credentials {
                bearer,
                basic,
                headers,
            },
        });
    }
    Ok(endpoints)
}

/// A client that speaks http and https, trusting the platform's roots and
/// the certificates in `ca` (its name, for errors, and its PEM).
fn client_trusting(ca: Option<(&str, &[u8])>) -> Result<Inner, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some((shown, pem)) = ca {
        use rustls_pki_types::pem::PemObject;
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("{shown}: not PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("{shown}: a certificate rustls refuses: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{shown} holds no PEM certificate"));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Whether an access entry for `at` applies to a call to `url`: the same
/// scheme, host and port (a host is never matched by prefix, so an entry
/// for `https://a.example` gives nothing to `https://a.example.evil.com`),
/// and a path under the entry's, at a segment boundary.
fn covers(at: &http::Uri, url: &http::Uri) -> bool {
    let port = |u: &http::Uri| {
        u.port_u16().unwrap_or(if u.scheme_str() == Some("https") {
            443
        } else {
            80
        })
    };
    let same_host = match (at.host(), url.host()) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    };
    let (base, path) = (at.path(), url.path());
    at.scheme_str()
        .zip(url.scheme_str())
        .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
        && same_host
        && port(at) == port(url)
        && (base == "/"
            || path == base
            || path.starts_with(base)
                && (base.ends_with('/') || path[base.len()..].starts_with('/')))
}

/// `url` as it may be shown: user info as `***@` and a query or fragment
/// as `?***` (either may hold a credential: `https://u:p@h/`,
/// `?api_key=…`). Text without a scheme is read as starting with an
/// authority.
///
/// A password may hold a `/`, `?` or `#` written raw (`https://u:pa/ss@h/`),
/// which ends the authority early for a parser: so an `@` past the end of
/// the authority means anything before it may be a password, and only the
/// scheme is shown (`https://***`). An `@` in a path or query costs that
/// URL its host in messages, never a secret.
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => (format!("{scheme}://"), rest),
        _ => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = match rest.rfind('@') {
        Some(at) if at >= end => return format!("{scheme}***"),
        Some(at) => format!("***@{}", &rest[at + 1..end]),
        None => rest[..end].to_string(),
    };
    let tail = &rest[end..];
    let tail = match tail.find(['?', '#']) {
        Some(q) => format!("{}?***", &tail[..q]),
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

/// Whether `text` is a URL scheme (RFC 3986 §3.1: a letter, then letters,
/// digits, `+`, `-` or `.`).
fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `uri` without its user info (`https://user:pass@host/`), and that user
/// info as Basic auth credentials, percent-decoded to bytes as Go's
/// `net/url` reads it (a `%FF` stays the byte 0xFF, never U+FFFD): user up
/// to the first `:`, password after. hyper would drop it without a word.
/// None: what is left is not a URI.
fn take_user_info(uri: http::Uri) -> Option<(http::Uri, Option<Credentials>)> {
    let Some((info, host)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) else {
        return Some((uri, None));
    };
    let (user, password) = info.split_once(':').unwrap_or((info, ""));
    let credentials = Credentials {
        basic: Some(BasicPair::new(
            &percent_decode(user),
            &percent_decode(password),
        )),
        ..Credentials::default()
    };
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(host.parse().ok()?);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Some((http::Uri::from_parts(parts).ok()?, Some(credentials)))
}

/// `%XX` escapes decoded to the bytes they stand for, UTF-8 or not (a
/// malformed one is kept as written).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Whether `url` is an `http://` or `https://` URL with a host (a parsed
/// check, not a prefix).
pub fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.host().is_some_and(|h| !h.is_empty())
            && u.authority().is_some_and(|a| port_ok(a.as_str()))
    })
}

/// Whether an authority's port, if it has one, is 1-65535 (`http` reads
/// a larger one as no port at all).
fn port_ok(authority: &str) -> bool {
    // User info (`user:pass@`) is not the port's.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    sluice_proxy::config::port_text(host_port).is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

#[derive(Clone)]
pub struct HttpClient {
    /// For URLs no endpoint of the access file matches.
    inner: Inner,
    endpoints: Arc<Vec<Endpoint>>,
}

impl HttpClient {
    /// A client with no access entries at all, not even the process-wide
    /// ones: for URLs an app's annotations give (its webhooks, checks and
    /// channels), which must not carry the operator's credentials.
    pub fn plain() -> Self {
        Self {
            inner: Self::default().inner,
            endpoints: Arc::default(),
        }
    }

    /// This client with `access`'s endpoints too (they win over the
    /// process-wide ones for the same URL prefix).
    pub fn with_access(&self, access: &Access) -> Self {
        let mut endpoints = access.0.as_ref().clone();
        endpoints.extend(self.endpoints.iter().cloned());
        Self {
            inner: self.inner.clone(),
            endpoints: Arc::new(endpoints),
        }
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        static PLAIN: OnceLock<Inner> = OnceLock::new();
        let inner = PLAIN
            .get_or_init(|| client_trusting(None).expect("no CA file to read"))
            .clone();
        Self {
            inner,
            endpoints: ACCESS.get().cloned().unwrap_or_default(),
        }
    }
}

/// A response read whole (these bodies are small: JSON, metrics text).
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// Its `Retry-After`, as the time to wait from when it was read (see
    /// [`retry_after`]).
    pub retry_after: Option<Duration>,
}

/// A `Retry-After` value (RFC 9110 §10.2.3) as the time to wait from
/// `now`: delay-seconds (digits only; more than a `u64` holds is the
/// longest wait, which the caller caps), or an HTTP-date in any of the
/// three forms a recipient must accept (IMF-fixdate `Wed, 21 Oct 2015
/// 07:28:00 GMT`, and the obsolete RFC 850 and asctime forms). A date
/// already past is no wait; anything else is `None`. The caller caps the
/// wait.
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// The wait an answer's `Retry-After` asks for. A date is read against the
/// answer's own `Date` when it has one (the server's clock on both sides,
/// so a clock of ours that is off does not stretch or shorten the wait),
/// else against ours.
fn retry_after_of(headers: &http::HeaderMap) -> Option<Duration> {
    let field = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let now = field(header::DATE)
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .unwrap_or_else(std::time::SystemTime::now);
    retry_after(field(header::RETRY_AFTER)?, now)
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl HttpClient {
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<(&str, Bytes)>,
        token: Option<&str>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let bad = || HttpError::BadUrl {
            url: shown_url(url),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad());
        }
        let (uri, user_info) = take_user_info(uri).ok_or_else(bad)?;
        // The longest path wins; of equal ones, the first (an app's own).
        let endpoint = self
            .endpoints
            .iter()
            .filter(|e| covers(&e.at, &uri))
            .rev()
            .max_by_key(|e| e.at.path().len());
        let client = endpoint.map_or(&self.inner, |e| &e.client);
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = match body {
            Some((content_type, bytes)) => req
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(bytes)),
            None => req.body(Full::default()),
        }
        .map_err(|_| bad())?;
        // The caller's fields replace the defaults of the same name (a
        // webhook's own `Content-Type`), never join them.
        for (name, value) in headers {
            let bad_header = || HttpError::BadHeader {
                url: shown_url(url),
                name: name.escape_debug().to_string(),
            };
            let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad_header())?;
            let value = http::HeaderValue::from_str(value).map_err(|_| bad_header())?;
            req.headers_mut().insert(name, value);
        }
        if let Some(e) = endpoint {
            // An explicit token (the proxy admin's) is never replaced.
            let explicit = req.headers().get(header::AUTHORIZATION).cloned();
            e.credentials.apply(req.headers_mut());
            if let Some(v) = explicit {
                req.headers_mut().insert(header::AUTHORIZATION, v);
            }
        }
        // As Go's net/http (Flagger's): the URL's user info is Basic auth
        // unless the call has an Authorization header already.
        if let Some(basic) = user_info
            && !req.headers().contains_key(header::AUTHORIZATION)
        {
            basic.apply(req.headers_mut());
        }
        let url = &shown_url(url);
        let exchange = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| HttpError::Unreachable {
                    url: url.to_string(),
                    reason: error_chain(&e),
                })?;
            let status = resp.status();
            let retry_after = retry_after_of(resp.headers());
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge {
                            url: url.to_string(),
                            status,
                        }
                    } else {
                        HttpError::Unreachable {
                            url: url.to_string(),
                            reason: error_chain(&*e),
                        }
                    }
                })?
                .to_bytes();
            Ok(Answer {
                status,
                body,
                retry_after,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                url: url.to_string(),
                timeout,
            })?
    }

    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Answer, HttpError> {
        self.call(Method::GET, url, None, None, &[], timeout).await
    }

    /// A GET with `Authorization: Bearer <token>` when a token is given.
    pub async fn get_with(
        &self,
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        self.call(Method::GET, url, None, token, &[], timeout).await
    }

    pub async fn send_json(
        &self,
        method: Method,
        url: &str,
        value: &serde_json::Value,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        self.post_json_with(method, url, value, token, &[], timeout)
            .await
    }

    /// Like [`HttpClient::send_json`], with more header fields.
    pub async fn post_json_with(
        &self,
        method: Method,
        url: &str,
        value: &serde_json::Value,
        token: Option<&str>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let body = Bytes::from(value.to_string());
        self.call(
            method,
            url,
            Some(("application/json", body)),
            token,
            headers,
            timeout,
        )
        .await
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Percent-encodes a query parameter value.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A 127.0.0.1 HTTP/1.1 server for unit tests of the clients here (hooks,
/// checks, Prometheus): it serves up to `connections` connections, one
/// request each, read whole (the head, then its `Content-Length` of
/// body), and answers each with the bytes `answer` makes of it (then
/// closes). Gives its address (`http://127.0.0.1:PORT`) and every request
/// read so far.
#[cfg(test)]
pub(crate) async fn test_server(
    connections: usize,
    answer: impl Fn(&[u8]) -> Vec<u8> + Send + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        for _ in 0..connections {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let reply = answer(&request);
            kept.lock().expect("requests").push(request);
            let _ = socket.write_all(&reply).await;
        }
    });
    (url, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9110 §10.2.3: delay-seconds or an HTTP-date, the date in any
    /// of the three forms of §5.6.7 (the same instant here, 30 s after
    /// `now`); a date already past is no wait.
    #[test]
    fn a_retry_after_is_read_as_seconds_or_as_a_date_in_each_form() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:07 GMT").unwrap();
        let wait = |v: &str| retry_after(v, now);
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(wait("30"), thirty);
        assert_eq!(wait(" 30 "), thirty);
        assert_eq!(wait("Sun, 06 Nov 1994 08:49:37 GMT"), thirty);
        assert_eq!(wait("Sunday, 06-Nov-94 08:49:37 GMT"), thirty);
        assert_eq!(wait("Sun Nov  6 08:49:37 1994"), thirty);
        assert_eq!(
            wait("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::from_secs(661_300_733))
        );
        assert_eq!(wait("Sun, 06 Nov 1994 08:48:07 GMT"), Some(Duration::ZERO));
        assert_eq!(wait("Sun, 06 Nov 1994 08:49:07 GMT"), Some(Duration::ZERO));
        assert_eq!(
            wait("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX)),
            "more seconds than a u64 holds was no wait at all"
        );
        for bad in ["", "-1", "+30", "1.5", "soon", "06 Nov 1994 08:49:37 GMT"] {
            assert_eq!(wait(bad), None, "{bad:?}");
        }
    }

    /// A date is read against the answer's own `Date`: a server whose
    /// clock is a day off from ours still gets the 30 s it asked for.
    #[test]
    fn a_retry_after_date_is_read_against_the_answers_own_date() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_of(&headers), Some(Duration::ZERO));
        headers.insert(
            header::DATE,
            "Sun, 06 Nov 1994 08:49:07 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_of(&headers), Some(Duration::from_secs(30)));
        headers.insert(header::DATE, "yesterday".parse().unwrap());
        assert_eq!(retry_after_of(&headers), Some(Duration::ZERO));
        headers.insert(header::RETRY_AFTER, "12".parse().unwrap());
        assert_eq!(retry_after_of(&headers), Some(Duration::from_secs(12)));
    }

    #[test]
    fn an_entry_covers_its_own_host_and_path_only() {
        let at = |u: &str| u.parse::<http::Uri>().unwrap();
        let entry = at("https://a.example/api");
        assert!(covers(&entry, &at("https://a.example/api")));
        assert!(covers(
            &entry,
            &at("https://A.example:443/api/v1/query?x=1")
        ));
        assert!(!covers(&entry, &at("https://a.example.evil.com/api")));
        assert!(!covers(&entry, &at("https://a.example/apix")));
        assert!(!covers(&entry, &at("http://a.example/api")));
        assert!(!covers(&entry, &at("https://a.example:8443/api")));
        assert!(!covers(&entry, &at("https://evil.com/a.example/api")));
        let root = at("https://a.example");
        assert!(covers(&root, &at("https://a.example/anything")));
        assert!(!covers(&root, &at("https://a.example.evil.com/")));
    }

    #[test]
    fn user_info_in_a_url_is_never_shown() {
        assert_eq!(
            shown_url("https://u:p4ss@h.example:9/x?a=b"),
            "https://***@h.example:9/x?***"
        );
        assert_eq!(
            shown_url("http://h.example/m?api_key=QS3CR3T"),
            "http://h.example/m?***"
        );
        assert_eq!(
            shown_url("http://h.example/a#frag"),
            "http://h.example/a?***"
        );
        assert_eq!(shown_url("u:p4ss@h:9090"), "***@h:9090");
        assert_eq!(shown_url("http://h.example/path"), "http://h.example/path");
        let e = HttpError::BadUrl {
            url: shown_url("ftp://u:p4ss@h"),
        };
        assert!(!e.to_string().contains("p4ss"), "{e}");
    }

    /// A URL with user info and no port is an http URL (the user info's
    /// `:` is not a port's); a bad port is still refused.
    #[test]
    fn user_info_without_a_port_is_a_url() {
        assert!(is_http_url("https://user:pass@hooks.example/x"));
        assert!(is_http_url("http://user@hooks.example/"));
        assert!(is_http_url("https://user:pass@hooks.example:8443/x"));
        assert!(!is_http_url("https://user:pass@hooks.example:99999/x"));
        assert!(!is_http_url("https://user:pass@hooks.example:0/x"));
    }

    /// A password written with a raw `/`, `?` or `#` ends the authority
    /// early for a parser; an `@` after that end hides all but the scheme.
    #[test]
    fn a_password_holding_a_slash_question_mark_or_hash_is_never_shown() {
        for (url, shown) in [
            ("https://svc:pa/ss@hooks.example/x", "https://***"),
            ("https://svc:p#ss@h/", "https://***"),
            ("https://svc:p?ss@h/", "https://***"),
            ("https://svc:12/ss@h/", "https://***"),
            ("https://u:p@ss@h.example/x", "https://***@h.example/x"),
            ("svc:pa/ss@h:9090", "***"),
            // An `@` in a path or query could be the end of a password.
            ("http://h.example/a@b", "http://***"),
            ("https://u:p4ss@h.example:9/x?a=b@c", "https://***"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
        // Whatever the text, no part of the password shows.
        for password in ["pa/ss", "p#ss", "p?ss", "p@ss", "p/s?s#s"] {
            for url in [
                format!("https://svc:{password}@hooks.example/x"),
                format!("http://svc:{password}@h"),
                format!("svc:{password}@h:1"),
            ] {
                let shown = shown_url(&url);
                assert!(
                    !shown.contains("svc:") && !shown.contains("ss"),
                    "{url}: {shown}"
                );
            }
        }
    }

    /// A token pasted into a Secret's access list where a key's name goes
    /// is not shown in the error (which becomes a Warning Event).
    #[test]
    fn a_secret_written_in_place_of_a_key_is_not_shown() {
        const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.pasted-token";
        let mut data = std::collections::BTreeMap::new();
        for field in [
            format!("bearer_token_file: {TOKEN}"),
            format!("basic_auth: {{ username: u, password_file: {TOKEN} }}"),
            format!("headers: {{ X-Api-Key: {TOKEN} }}"),
        ] {
            let yaml = format!("- url: https://a.example/\n  {field}\n");
            data.insert("access.yaml".to_string(), yaml.into_bytes());
            let err = parse_access_data(&data, "Secret app-access").err().unwrap();
            assert!(err.contains("names no key of the Secret"), "{err}");
            assert!(!err.contains(TOKEN), "{err}");
        }
    }

    #[test]
    fn secrets_print_redacted_and_go_out_as_sensitive_headers() {
        let credentials = Credentials {
            bearer: None,
            basic: Some(BasicPair::new(b"Aladdin", b"open sesame")),
            headers: vec![(HeaderName::from_static("x-api-key"), Secret("k3y".into()))],
        };
        let shown = format!("{credentials:?}");
        assert!(
            !shown.contains("open sesame") && !shown.contains("k3y"),
            "{shown}"
        );
        let mut headers = http::HeaderMap::new();
        credentials.apply(&mut headers);
        // RFC 7617 §2's example.
        assert_eq!(
            headers[header::AUTHORIZATION],
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert!(headers[header::AUTHORIZATION].is_sensitive());
        assert_eq!(headers["x-api-key"], "k3y");
        assert!(headers["x-api-key"].is_sensitive());
    }

    /// `https://user:pass@host/` sends Basic auth, as Go's net/http does
    /// (Flagger's webhooks), percent-decoded; the user info is not in the
    /// Host header. An Authorization the call has already wins.
    #[tokio::test]
    async fn user_info_in_a_url_goes_out_as_basic_auth() {
        use base64::Engine;
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_string();
        let (url, heads) = one_shot(ok.clone(), 0).await;
        let with_user = url.replacen("http://", "http://svc:pa%2Fss%40w0rd@", 1);
        HttpClient::plain()
            .get(&with_user, Duration::from_secs(5))
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&heads.lock().unwrap()[0]).to_ascii_lowercase();
        let expected = base64::engine::general_purpose::STANDARD
            .encode("svc:pa/ss@w0rd")
            .to_ascii_lowercase();
        assert!(
            head.contains(&format!("authorization: basic {expected}\r\n")),
            "{head}"
        );
        let host = url.trim_start_matches("http://").trim_end_matches("/hook");
        assert!(head.contains(&format!("host: {host}\r\n")), "{head}");
        assert!(!head.contains("svc"), "{head}");
        // An explicit token is not replaced by the URL's user info.
        let (url, heads) = one_shot(ok, 0).await;
        let with_user = url.replacen("http://", "http://svc:pw@", 1);
        HttpClient::plain()
            .get_with(&with_user, Some("t0ken"), Duration::from_secs(5))
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&heads.lock().unwrap()[0]).to_ascii_lowercase();
        assert!(head.contains("authorization: bearer t0ken\r\n"), "{head}");
    }

    /// A percent-escape that is no UTF-8 (`%FF`, `%C3` alone) goes out as
    /// the byte it stands for, as Go's net/http sends it, never as U+FFFD:
    /// `svc:p\xFFw\xC3` is `c3ZjOnD/d8M=`.
    #[tokio::test]
    async fn user_info_bytes_that_are_not_utf8_go_out_as_they_are() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_string();
        let (url, heads) = one_shot(ok, 0).await;
        let with_user = url.replacen("http://", "http://svc:p%FFw%C3@", 1);
        HttpClient::plain()
            .get(&with_user, Duration::from_secs(5))
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&heads.lock().unwrap()[0]).to_string();
        let sent = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"));
        assert_eq!(sent, Some("authorization: Basic c3ZjOnD/d8M="), "{head}");
    }

    /// An access entry's URL with user info is refused, pointing to
    /// basic_auth, and the password is not shown.
    #[test]
    fn an_access_entry_with_user_info_is_refused() {
        let mut data = std::collections::BTreeMap::new();
        data.insert(
            "access.yaml".to_string(),
            b"- url: https://svc:hunter2@a.example/\n".to_vec(),
        );
        let err = parse_access_data(&data, "Secret app-access").err().unwrap();
        assert!(err.contains("give basic_auth"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// One answer: `answer_head`, then `body_bytes` zero bytes.
    async fn one_shot(
        answer_head: String,
        body_bytes: usize,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
        let (url, seen) = super::test_server(1, move |_| {
            let mut answer = answer_head.clone().into_bytes();
            answer.resize(answer.len() + body_bytes, 0);
            answer
        })
        .await;
        (format!("{url}/hook"), seen)
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_an_error_not_all_the_memory() {
        let too_big = MAX_ANSWER_BYTES + 1;
        for framing in [format!("Content-Length: {too_big}"), String::new()] {
            let head = format!("HTTP/1.1 200 OK\r\n{framing}\r\nConnection: close\r\n\r\n");
            let (url, _) = one_shot(head, too_big).await;
            let err = HttpClient::plain()
                .get(&url, Duration::from_secs(20))
                .await
                .err()
                .expect("an answer over the limit is refused");
            assert!(
                matches!(err, HttpError::TooLarge { status, .. } if status == StatusCode::OK),
                "{framing}: {err}"
            );
            assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
        }
        // At the limit it is read.
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {MAX_ANSWER_BYTES}\r\n\r\n");
        let (url, _) = one_shot(head, MAX_ANSWER_BYTES).await;
        let answer = HttpClient::plain()
            .get(&url, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(answer.body.len(), MAX_ANSWER_BYTES);
    }

    /// A header the caller gives that HTTP does not allow is said to be
    /// one, by name, and its value is not shown; the URL is fine.
    #[tokio::test]
    async fn a_bad_header_is_named_not_called_a_bad_url() {
        for (name, value) in [("X Team", "payments"), ("X-Key", "s3cr3t\nvalue")] {
            let err = HttpClient::plain()
                .post_json_with(
                    Method::POST,
                    "http://127.0.0.1:1/hook",
                    &serde_json::json!({}),
                    None,
                    &[(name, value)],
                    Duration::from_secs(5),
                )
                .await
                .err()
                .expect("refused");
            let shown = err.to_string();
            assert!(matches!(err, HttpError::BadHeader { .. }), "{shown}");
            assert!(shown.contains(&format!("the header `{name}`")), "{shown}");
            assert!(!shown.contains("not a valid http"), "{shown}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
    }

    #[tokio::test]
    async fn a_callers_field_replaces_the_default_of_the_same_name() {
        let (url, head) = one_shot("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into(), 0).await;
        HttpClient::plain()
            .post_json_with(
                Method::POST,
                &url,
                &serde_json::json!({"name": "web"}),
                None,
                &[("Content-Type", "text/plain"), ("X-Team", "payments")],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&head.lock().unwrap()[0]).to_ascii_lowercase();
        let types: Vec<&str> = head
            .lines()
            .filter(|l| l.starts_with("content-type:"))
            .collect();
        assert_eq!(types, ["content-type: text/plain"], "{head}");
        assert!(head.contains("x-team: payments"), "{head}");
    }
}
