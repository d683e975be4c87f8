//! TLS with rustls and the ring provider, TLS 1.2 and 1.3 only.
//!
//! - Termination: the data-plane listener offers ALPN `h2` and `http/1.1`,
//!   and with `client_ca_file` requires client certificates (mTLS). The
//!   certificate, key and client CA files are watched; a valid new set is
//!   used for new connections (open ones keep theirs), an unreadable or
//!   mismatched set is logged and the old one keeps serving. So is a new
//!   certificate outside its validity period (expired, or not valid yet)
//!   while the one serving is inside its own: clients would refuse it, and
//!   the old one may still serve for days. When both are outside, the new
//!   one is taken, with a warning, as it is at start. The served
//!   certificate's end of validity is exported
//!   (`sluice_tls_certificate_expiry_timestamp_seconds`), and whether the
//!   files' last change was taken (`sluice_tls_last_reload_successful`),
//!   apart from the config's own reloads.
//! - Origination: `https://` upstreams are verified against `ca_file` (or the
//!   system roots); there is no way to switch verification off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
pub use crate::config::UpstreamTlsKey;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    std::fs::metadata(path).map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{field}: {} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{field}: {} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn read_roots(path: &Path, field: &str) -> Result<RootCertStore, String> {
    roots_of(read_certs(path, field)?, path, field)
}

fn roots_of(
    certs: Vec<CertificateDer<'static>>,
    path: &Path,
    field: &str,
) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            format!(
                "{field}: {} holds an unusable CA certificate: {e}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// Loads and checks a certificate and its key; errors name the field.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = read_certs(cert_file, "tls.cert_file")?;
    std::fs::metadata(key_file)
        .map_err(|e| format!("tls.key_file: cannot read {}: {e}", key_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "tls.key_file: {} is not a PEM private key: {e}",
            key_file.display()
        )
    })?;
    CertifiedKey::from_der(certs, key, &provider())
        .map(Arc::new)
        .map_err(|e| match e {
            // The leaf could not be read as an X.509 certificate (the key's
            // public half is compared with the certificate's).
            rustls::Error::InvalidCertificate(e) => {
                let hint = if format!("{e:?}").contains("UnsupportedCertVersion") {
                    " (an X.509 version 1 certificate: only version 3 is accepted; \
                     openssl makes v3 with `req -x509` or with `-extfile`)"
                } else {
                    ""
                };
                format!(
                    "tls.cert_file: {} is not a certificate the proxy can use: {e}{hint}",
                    cert_file.display()
                )
            }
            rustls::Error::InconsistentKeys(_) => format!(
                "tls.key_file: {} does not belong to the certificate in {}: {e}",
                key_file.display(),
                cert_file.display()
            ),
            e => format!(
                "tls.key_file: {} is not a key the proxy can use with the certificate in {}: {e}",
                key_file.display(),
                cert_file.display()
            ),
        })
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Builds the listener's TLS configuration from the files named in `tls`.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    served_config(tls).map(|(config, _)| config)
}

/// A certificate's validity period, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// The leaf's, when its DER can be read (rustls has checked it is a
    /// certificate already; None only for one x509-parser cannot read).
    fn of(leaf: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let validity = cert.validity();
        Some(Self {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }

    fn holds_at(&self, now: i64) -> bool {
        (self.not_before..=self.not_after).contains(&now)
    }

    /// What is wrong at `now`, for a log line (None: valid).
    fn problem_at(&self, now: i64) -> Option<String> {
        let date = |secs: i64| {
            httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
            )
        };
        if now > self.not_after {
            Some(format!(
                "the certificate expired on {}",
                date(self.not_after)
            ))
        } else if now < self.not_before {
            Some(format!(
                "the certificate is not valid before {}",
                date(self.not_before)
            ))
        } else {
            None
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// [`server_config`] and the leaf certificate's validity.
fn served_config(tls: &TlsConfig) -> Result<(Arc<ServerConfig>, Option<Validity>), String> {
    let key = load_certified_key(&tls.cert_file, &tls.key_file)?;
    let validity = key.end_entity_cert().ok().and_then(Validity::of);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let roots = read_roots(ca, "tls.client_ca_file")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("tls.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(FixedCert(key)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), validity))
}

/// Why a change of the listener's files was not taken.
#[derive(Debug)]
pub struct Refused {
    pub message: String,
    /// When the new certificate, refused only because it is not valid
    /// yet, becomes valid (Unix seconds): the files are read again then.
    pub valid_from: Option<i64>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The listener's current TLS configuration, replaced when its files change.
pub struct Terminator {
    pub tls: TlsConfig,
    current: ArcSwap<ServerConfig>,
    /// The served leaf's validity.
    validity: std::sync::Mutex<Option<Validity>>,
}

impl Terminator {
    /// The listener's TLS from `tls`'s files; a certificate outside its
    /// validity period is served, with a warning (see the module docs).
    pub fn new(tls: TlsConfig) -> Result<Arc<Self>, String> {
        let (config, validity) = served_config(&tls)?;
        if let Some(problem) = validity.and_then(|v| v.problem_at(unix_now())) {
            tracing::warn!(file = %tls.cert_file.display(), "{problem}; it is served, and clients that check dates will refuse it");
        }
        Ok(Arc::new(Self {
            tls,
            current: ArcSwap::new(config),
            validity: std::sync::Mutex::new(validity),
        }))
    }

    /// When the served certificate stops being valid, in Unix seconds.
    pub fn not_after(&self) -> Option<i64> {
        self.validity.lock().expect("validity").map(|v| v.not_after)
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files; on error the old configuration stays (see the
    /// module docs for a certificate outside its validity period).
    pub fn reload(&self) -> Result<(), Refused> {
        let (config, validity) = served_config(&self.tls).map_err(|message| Refused {
            message,
            valid_from: None,
        })?;
        let now = unix_now();
        let mut served = self.validity.lock().expect("validity");
        if let Some(new) = validity
            && let Some(problem) = new.problem_at(now)
        {
            match *served {
                Some(s) if s.holds_at(now) => {
                    return Err(Refused {
                        message: format!(
                            "tls.cert_file: {}: {problem}, and the one serving is still valid",
                            self.tls.cert_file.display()
                        ),
                        valid_from: (new.not_before > now).then_some(new.not_before),
                    });
                }
                Some(_) => {
                    tracing::warn!(file = %self.tls.cert_file.display(), "{problem}; it is served, as the one it replaces is not valid either");
                }
                None => {
                    tracing::warn!(file = %self.tls.cert_file.display(), "{problem}; it is served, as the dates of the one it replaces could not be read");
                }
            }
        }
        *served = validity;
        self.current.store(config);
        Ok(())
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.tls.cert_file.clone(), self.tls.key_file.clone()];
        files.extend(self.tls.client_ca_file.clone());
        files
    }

    /// Watches the certificate files and reloads on change.
    /// Outcomes count in `sluice_config_reloads_total` and show in
    /// `sluice_tls_last_reload_successful`.
    pub fn watch(
        self: &Arc<Self>,
        metrics: Arc<crate::Metrics>,
    ) -> notify::Result<tokio::task::JoinHandle<()>> {
        use notify::{RecursiveMode, Watcher};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| crate::file_watch::is_change(&e)) {
                    let _ = tx.send(());
                }
            })?;
        let mut dirs: Vec<PathBuf> = self
            .files()
            .iter()
            .map(|f| {
                f.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."))
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        let this = self.clone();
        let read_all = move |files: &[PathBuf]| {
            files
                .iter()
                .map(|f| std::fs::read(f).ok())
                .collect::<Vec<_>>()
        };
        let files = this.files();
        let mut last = read_all(&files);
        Ok(tokio::spawn(async move {
            let _watcher = watcher;
            // When to read the files again though nothing changed: a
            // certificate refused only because it is not valid yet.
            let mut retry: Option<tokio::time::Instant> = None;
            loop {
                let again = tokio::select! {
                    event = rx.recv() => match event {
                        Some(()) => false,
                        None => break,
                    },
                    () = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)), if retry.is_some() => true,
                };
                // Writers replace cert and key one after the other: let both land.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                let now = read_all(&files);
                if now == last && !again {
                    continue;
                }
                last = now;
                retry = None;
                match this.reload() {
                    Ok(()) => {
                        metrics.record_tls_reload(
                            crate::metrics::ReloadResult::Success,
                            this.not_after(),
                        );
                        tracing::info!("TLS certificate reloaded; new connections use it");
                    }
                    Err(e) => {
                        metrics.record_tls_reload(
                            crate::metrics::ReloadResult::Failure,
                            this.not_after(),
                        );
                        tracing::error!(error = %e, "TLS files rejected; the previous certificate keeps serving");
                        if let Some(from) = e.valid_from {
                            // At most an hour (the wall clock may be set
                            // meanwhile): a date further ahead is looked
                            // at again then.
                            let wait = u64::try_from(from - unix_now()).unwrap_or(0).min(3_600) + 1;
                            retry = Some(tokio::time::Instant::now() + Duration::from_secs(wait));
                        }
                    }
                }
            }
        }))
    }
}

// === origination ===

/// A rustls client configuration for an upstream, with ALPN for its protocol.
pub fn client_config(key: &UpstreamTlsKey, http2: bool) -> Result<Arc<ClientConfig>, String> {
    let ca =
        match &key.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                format!("upstream_tls.ca_file: cannot read {}: {e}", path.display())
            })?),
            None => None,
        };
    client_config_from(key, ca.as_deref(), http2)
}

/// [`client_config`] with the `ca_file`'s bytes already read (`ca` is
/// None without a `ca_file`: the system roots).
pub fn client_config_from(
    key: &UpstreamTlsKey,
    ca: Option<&[u8]>,
    http2: bool,
) -> Result<Arc<ClientConfig>, String> {
    const FIELD: &str = "upstream_tls.ca_file";
    let roots = match (&key.ca_file, ca) {
        (Some(path), Some(bytes)) => {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{FIELD}: {} is not PEM certificates: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{FIELD}: {} holds no certificate", path.display()));
            }
            roots_of(certs, path, FIELD)?
        }
        (Some(path), None) => {
            return Err(format!("{FIELD}: cannot read {}", path.display()));
        }
        (None, _) => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    with_roots(roots, http2)
}

/// The configuration for an upstream whose `ca_file` broke after it was
/// checked: it trusts nothing, so every handshake fails (502,
/// `kind="tls"`). It never falls back to the system roots, which would
/// trust certificates the user did not choose.
pub fn fail_closed_config(http2: bool) -> Arc<ClientConfig> {
    with_roots(RootCertStore::empty(), http2).expect("an empty root store always builds")
}

fn with_roots(roots: RootCertStore, http2: bool) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("upstream_tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}
