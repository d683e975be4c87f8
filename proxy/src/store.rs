//! The one place a routing table is replaced.
//!
//! Every source (the watched file, the admin API, a Kubernetes ConfigMap)
//! hands a whole [`Config`] to [`Store::replace`]: it is validated first, and
//! only a valid one is built and swapped in atomically. Invalid input changes
//! nothing; the last good table keeps serving. Writers are serialized so an
//! admin write and a file reload cannot interleave.
//!
//! Settings bound at start (`listen`, `admin`, `limits`, `listeners`) cannot
//! change on a reload; such a reload is rejected and names the field, so
//! nothing is ever half applied. `tcp_listeners` can: their new addresses
//! are bound before the swap, and a reload whose address cannot be bound is
//! rejected naming it (see [`crate::tcp`]). The store knows those
//! listeners only as a [`TcpLayout`], which `crate::tcp` implements: the
//! store sits below the listeners and never imports them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;

use crate::config::{
    AffinityConfig, Config, ConfigErrors, MatchRule, MirrorConfig, RouteConfig, ValidTcpListener,
};
use crate::metrics::{Metrics, ReloadResult};
use crate::routing::Routing;
use crate::upstream::ClientPool;

pub struct Store {
    routing: ArcSwap<Routing>,
    write_lock: Mutex<()>,
    pool: ClientPool,
    metrics: Arc<Metrics>,
    /// The plain TCP listeners, reconciled with every replaced config
    /// (set once the proxy serves; see [`crate::tcp`]).
    tcp: std::sync::OnceLock<Arc<dyn TcpLayout>>,
}

/// The plain TCP listeners as a reload sees them (implemented by
/// `crate::tcp::TcpListeners`): a layout to bring in step with each new
/// config, in two steps around the swap of the routing table.
pub trait TcpLayout: Send + Sync {
    /// Binds what `listeners` needs that is not bound yet, changing
    /// nothing that serves; errors name `tcp_listeners[i].listen`. The
    /// returned step, run once the new table is in, makes `listeners`
    /// the ones serving.
    fn stage(&self, listeners: &[ValidTcpListener]) -> Result<Staged<'_>, ConfigErrors>;

    /// The listeners serving now: (name, bound address).
    fn bound(&self) -> Vec<(String, std::net::SocketAddr)>;
}

/// The second step of [`TcpLayout::stage`]: serve what was bound.
pub type Staged<'a> = Box<dyn FnOnce() + 'a>;

/// Why an admin route update was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("no route named `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Invalid(ConfigErrors),
}

impl Store {
    /// Validates and serves `config`; errors list every problem.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Self>, ConfigErrors> {
        Self::with_threads(config, metrics, 0)
    }

    /// Like [`Store::new`], with upstream clients for `threads` dedicated
    /// serving threads (see [`crate::StartOptions::threads`]).
    pub fn with_threads(
        config: Config,
        metrics: Arc<Metrics>,
        threads: usize,
    ) -> Result<Arc<Self>, ConfigErrors> {
        let valid = config.validate()?;
        check_files(&valid, None)?;
        let pool = ClientPool::new(threads);
        let routing = Routing::build(config, valid, None, &pool, &metrics);
        Ok(Arc::new(Self {
            routing: ArcSwap::from_pointee(routing),
            write_lock: Mutex::new(()),
            pool,
            metrics,
            tcp: std::sync::OnceLock::new(),
        }))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves the current config's TCP listeners with `start` (the first
    /// binding; its error is the caller's to report), and makes every later
    /// replacement reconcile `layout` with its config.
    pub fn attach_tcp<E>(
        &self,
        layout: Arc<dyn TcpLayout>,
        start: impl FnOnce(&[ValidTcpListener]) -> Result<(), E>,
    ) -> Result<(), E> {
        // Under the write lock: no reload can slip between the first
        // binding and the hook.
        let _guard = self.write_lock.lock().expect("store lock");
        start(&self.load().valid.tcp_listeners)?;
        let _ = self.tcp.set(layout);
        Ok(())
    }

    /// The plain TCP listeners serving now: (name, bound address).
    pub fn tcp_listener_addrs(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.tcp.get().map(|t| t.bound()).unwrap_or_default()
    }

    /// The table in force now.
    pub fn load(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// The current table for a short look (no reference count taken; do
    /// not hold it across an await).
    pub fn peek(&self) -> arc_swap::Guard<Arc<Routing>> {
        self.routing.load()
    }

    /// Validates `config` and swaps it in, or changes nothing.
    pub fn replace(&self, config: Config) -> Result<Arc<Routing>, ConfigErrors> {
        let result = self.apply(config);
        self.metrics.record_reload(if result.is_ok() {
            ReloadResult::Success
        } else {
            ReloadResult::Failure
        });
        result
    }

    /// [`Store::replace`] without counting a reload.
    fn apply(&self, config: Config) -> Result<Arc<Routing>, ConfigErrors> {
        let _guard = self.write_lock.lock().expect("store lock");
        self.replace_locked(config)
    }

    fn replace_locked(&self, config: Config) -> Result<Arc<Routing>, ConfigErrors> {
        let current = self.routing.load_full();
        let valid = config.validate()?;
        let mut fixed = Vec::new();
        if config.listen != current.config.listen {
            fixed.push(("listen", &current.config.listen, &config.listen));
        }
        if config.listeners != current.config.listeners {
            return Err(ConfigErrors::single(
                "listeners",
                "adding, removing or moving listeners needs a restart",
            ));
        }
        if config.admin.listen != current.config.admin.listen {
            fixed.push((
                "admin.listen",
                &current.config.admin.listen,
                &config.admin.listen,
            ));
        }
        if !fixed.is_empty() {
            return Err(ConfigErrors(
                fixed
                    .into_iter()
                    .map(|(path, old, new)| crate::config::FieldError {
                        path: path.to_string(),
                        message: format!("changing `{old}` to `{new}` needs a restart"),
                    })
                    .collect(),
            ));
        }
        if config.limits != current.config.limits {
            return Err(ConfigErrors::single(
                "limits",
                "changing limits needs a restart",
            ));
        }
        if config.tls != current.config.tls {
            return Err(ConfigErrors::single(
                "tls",
                "changing the listener's TLS settings needs a restart (the certificate files themselves are watched)",
            ));
        }
        check_files(&valid, Some(&current.valid))?;
        // New TCP addresses are bound before the swap, so a port that is
        // taken refuses the reload instead of half applying it.
        let tcp = match self.tcp.get() {
            Some(tcp) => Some(tcp.stage(&valid.tcp_listeners)?),
            None => None,
        };
        let routing = Arc::new(Routing::build(
            config,
            valid,
            Some(&current),
            &self.pool,
            &self.metrics,
        ));
        self.routing.store(routing.clone());
        if let Some(serve_staged) = tcp {
            serve_staged();
        }
        self.pool.retain(&routing.pool_keys());
        Ok(routing)
    }

    /// Builds the table again, as it is, when an upstream `ca_file` in use
    /// holds new bytes, or some upstream still verifies with contents read
    /// before its file changed in the middle of a build (see
    /// [`ClientPool::cas_changed`]), so a rotated CA reaches new
    /// connections without a reload. Not a reload: nothing is counted.
    pub fn refresh_upstream_cas(&self) {
        if !self.pool.cas_changed() {
            return;
        }
        let _guard = self.write_lock.lock().expect("store lock");
        let current = self.routing.load_full();
        if let Err(errors) = self.replace_locked(current.config.clone()) {
            tracing::error!(%errors, "rebuilding the table for a changed upstream ca_file failed; it keeps serving");
        }
    }

    /// Applies an admin patch (any of `stable`, `canary`, `baseline`,
    /// `canary_weight`, `canary_match`, `affinity`, `mirror`; null removes
    /// the setting of `canary`, `baseline` and the last three) to one route
    /// and swaps the result in. The patch is applied whole, then the route
    /// validated, so one PUT can add a baseline and lower the weight to 50
    /// or below together.
    pub fn update_route(&self, name: &str, patch: &Value) -> Result<RouteConfig, UpdateError> {
        let current = self.load();
        let mut config = current.config.clone();
        let route = config
            .routes
            .iter_mut()
            .find(|r| r.name == name)
            .ok_or_else(|| UpdateError::NotFound(name.to_string()))?;
        apply_patch(route, patch).map_err(UpdateError::Invalid)?;
        let index = config
            .routes
            .iter()
            .position(|r| r.name == name)
            .expect("route found above");
        // Not a reload: the reload metrics speak of the config's source
        // (the file, the ConfigMap, the Gateway API), which an admin
        // update leaves as it was.
        let routing = self.apply(config).map_err(UpdateError::Invalid)?;
        Ok(routing.config.routes[index].clone())
    }

    /// The admin token, if one is configured.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        let routing = self.load();
        match &routing.valid.admin_token_file {
            None => Ok(None),
            Some(path) => read_token(path).map(Some),
        }
    }
}

fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token)
}

/// Checks the files a config names: the admin token, the listener's
/// certificate and key (and that they match), upstream CA bundles. On a
/// change (`before`: the config in force), only the files it brings in:
/// a file already in use is read on its own (the token at each admin
/// request, the certificate by its watcher), so a certificate rotation
/// half done on disk never blocks a route change, a rollback least of
/// all.
pub fn check_files(
    valid: &crate::config::ValidConfig,
    before: Option<&crate::config::ValidConfig>,
) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let token_is_new = before.is_none_or(|b| b.admin_token_file != valid.admin_token_file);
    if token_is_new
        && let Some(p) = &valid.admin_token_file
        && let Err(e) = read_token(p)
    {
        errors.push(crate::config::FieldError {
            path: "admin.token_file".into(),
            message: e,
        });
    }
    // A change may not touch the listener's TLS settings (see
    // `replace_locked`): its files are checked once, at the start.
    if before.is_none()
        && let Some(tls) = &valid.tls
        && let Err(e) = crate::tls::server_config(tls)
    {
        let (path, message) = e.split_once(": ").unwrap_or(("tls", e.as_str()));
        errors.push(crate::config::FieldError {
            path: path.to_string(),
            message: message.to_string(),
        });
    }
    for (i, route) in valid.routes.iter().enumerate() {
        if let Some(key) = route
            .upstream_tls_keys()
            .find(|key| !before.is_some_and(|b| uses_upstream_tls(b, key)))
            && let Err(e) = crate::tls::client_config(&key, false)
        {
            let message = e.split_once(": ").map(|(_, m)| m.to_string()).unwrap_or(e);
            errors.push(crate::config::FieldError {
                path: format!("routes[{i}].upstream_tls.ca_file"),
                message,
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Whether some route of `valid` verifies an upstream with `key`.
fn uses_upstream_tls(
    valid: &crate::config::ValidConfig,
    key: &crate::config::UpstreamTlsKey,
) -> bool {
    valid
        .routes
        .iter()
        .any(|route| route.upstream_tls_keys().any(|k| k == *key))
}

const PATCH_FIELDS: &str = "a route update may set stable, canary, baseline, canary_weight, canary_match, affinity, mirror";

fn apply_patch(route: &mut RouteConfig, patch: &Value) -> Result<(), ConfigErrors> {
    let Value::Object(fields) = patch else {
        return Err(ConfigErrors::single(
            "",
            format!("the body must be a JSON object; {PATCH_FIELDS}"),
        ));
    };
    let mut errors = Vec::new();
    let mut err = |path: &str, msg: String| {
        errors.push(crate::config::FieldError {
            path: path.to_string(),
            message: msg,
        })
    };
    for (key, value) in fields {
        match key.as_str() {
            "stable" => match value.as_str() {
                Some(s) => route.stable = s.to_string(),
                None => err("stable", format!("{value} is not a string URL")),
            },
            "canary" => match value {
                Value::Null => route.canary = None,
                Value::String(s) => route.canary = Some(s.clone()),
                other => err("canary", format!("{other} is not a string URL or null")),
            },
            "baseline" => match value {
                Value::Null => route.baseline = None,
                Value::String(s) => route.baseline = Some(s.clone()),
                other => err("baseline", format!("{other} is not a string URL or null")),
            },
            "canary_weight" => match value.as_f64() {
                // `-0` is 0 (`-0.0 + 0.0` is `+0.0`): shown as such.
                Some(w) => route.canary_weight = w + 0.0,
                None => err("canary_weight", format!("{value} is not a number")),
            },
            "canary_match" => match value {
                Value::Null => route.canary_match.clear(),
                _ => match crate::config::strict_from_json::<Vec<MatchRule>>(value.clone()) {
                    Ok(rules) => route.canary_match = rules,
                    Err(e) => err(
                        "canary_match",
                        format!("{e} (a list of rules; [] or null removes them)"),
                    ),
                },
            },
            "affinity" => match value {
                Value::Null => route.affinity = None,
                _ => match crate::config::strict_from_json::<AffinityConfig>(value.clone()) {
                    Ok(a) => route.affinity = Some(a),
                    Err(e) => err("affinity", e.to_string()),
                },
            },
            "mirror" => match value {
                Value::Null => route.mirror = None,
                _ => match crate::config::strict_from_json::<MirrorConfig>(value.clone()) {
                    Ok(m) => route.mirror = Some(m),
                    Err(e) => err("mirror", e.to_string()),
                },
            },
            other => err(other, format!("unknown field; {PATCH_FIELDS}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads and parses a config file.
pub fn read_config_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single("", format!("cannot read {}: {e}", path.display())))?;
    Config::from_yaml(&text)
}

/// How often the upstream `ca_file`s in use are read, for
/// [`Store::refresh_upstream_cas`].
pub const CA_POLL_EVERY: Duration = Duration::from_secs(5);

/// Reads the upstream `ca_file`s in use every [`CA_POLL_EVERY`] and
/// applies what changed (see [`Store::refresh_upstream_cas`]).
pub async fn poll_upstream_cas(store: Arc<Store>) {
    let mut ticks = tokio::time::interval(CA_POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // File reads (a slow mount) stay off the serving threads.
        let store = store.clone();
        let _ = tokio::task::spawn_blocking(move || store.refresh_upstream_cas()).await;
    }
}

/// Watches `path` and replaces the table whenever its content changes.
///
/// The parent directory is watched, not the file, so editors that write a new
/// file and rename it, and Kubernetes' symlink swaps, are seen too. A later
/// file reload replaces any change made through the admin API. SIGHUP
/// re-reads and applies the file even when its text is as it was (as
/// `nginx -s reload` does): the way to put the file back in force over
/// admin changes without editing it. A file that cannot be read (deleted,
/// a dangling symlink, not UTF-8) is a failed reload, counted and logged
/// once for each new reason, and the last good config keeps serving.
pub fn watch_file(path: PathBuf, store: Arc<Store>) -> notify::Result<tokio::task::JoinHandle<()>> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| crate::file_watch::is_change(&e)) {
            let _ = tx.send(());
        }
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut last_text = std::fs::read_to_string(&path).ok();
    // Why the file could not be read the last time, if it could not.
    let mut unreadable: Option<String> = None;
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let forced = tokio::select! {
                event = rx.recv() => match event {
                    Some(()) => false,
                    None => break,
                },
                Some(()) = async {
                    match &mut hangups {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if forced {
                tracing::info!(file = %path.display(), "SIGHUP: re-reading the config file");
            } else {
                // Let a burst of events (write, chmod, rename) settle first.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            while rx.try_recv().is_ok() {}
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => {
                    unreadable = None;
                    text
                }
                Err(e) => {
                    // One failed reload per new reason, logged once: every
                    // event of the directory (the proxy's own log may be
                    // written there) reads the file again.
                    let reason = e.to_string();
                    // Whatever text comes back next is applied, even the
                    // last good one (whose success then shows again).
                    last_text = None;
                    if forced || unreadable.as_deref() != Some(reason.as_str()) {
                        store.metrics.record_reload(ReloadResult::Failure);
                        tracing::warn!(
                            file = %path.display(),
                            error = %e,
                            "cannot read the config file; the last good config keeps serving"
                        );
                        unreadable = Some(reason);
                    }
                    continue;
                }
            };
            if !forced && last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            last_text = Some(text.clone());
            let result = match crate::config::guarded(|| Config::from_yaml(&text)) {
                Ok(config) => store.replace(config).map(|_| ()),
                Err(parse_errors) => {
                    store.metrics.record_reload(ReloadResult::Failure);
                    Err(parse_errors)
                }
            };
            match result {
                Ok(()) => tracing::info!(file = %path.display(), "config reloaded"),
                Err(errors) => tracing::error!(
                    file = %path.display(),
                    %errors,
                    "config rejected; the last good config keeps serving"
                ),
            }
        }
    }))
}
