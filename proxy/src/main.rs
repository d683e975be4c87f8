//! `sluice-proxy`: run the data plane, or check a config file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "sluice-proxy",
    version,
    about = "Sluice data plane: exact-weight canary split with RED metrics"
)]
struct Cli {
    /// Config file (YAML); watched and reloaded on change.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// After SIGTERM/SIGINT, how long `/readyz` answers 503 while the
    /// listeners keep accepting, so load balancers and kube-proxy stop
    /// sending before the listeners close.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_delay: Duration,
    /// Read the config from this ConfigMap's `routes.yaml` through the
    /// Kubernetes API (in-cluster or kubeconfig credentials) and follow it.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "config")]
    kube_configmap: Option<String>,
    /// Serve the Gateway API: the Gateways of this controller's
    /// GatewayClasses and their HTTPRoutes (see docs/gateway-api.md).
    #[arg(long, conflicts_with_all = ["config", "kube_configmap"])]
    gateway_api: bool,
    /// The GatewayClass `controllerName` served with `--gateway-api`.
    #[arg(long, default_value = sluice_proxy::gateway::DEFAULT_CONTROLLER, requires = "gateway_api")]
    gateway_controller_name: String,
    /// The address the Gateways' listener ports are bound on.
    #[arg(long, default_value = "0.0.0.0", requires = "gateway_api")]
    gateway_bind: String,
    /// The admin listener (metrics, health) with `--gateway-api`.
    #[arg(long, default_value = "0.0.0.0:9901", requires = "gateway_api")]
    gateway_admin_listen: String,
    /// Serving threads, each with its own runtime, listener (SO_REUSEPORT)
    /// and upstream pools (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Log format (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file: exit 0 when valid, 2 with every error listed.
    Check { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_proxy::config::parse_duration(s)
}

/// mimalloc (v3) rather than glibc's malloc: 2-4% more HTTP/2 requests
/// per CPU-second, where a stream's frames, head and state are many
/// short-lived allocations (`docs/benchmarks.md`, "Idle memory"). Built
/// not to ask for transparent huge pages (`no_thp`), and `main` turns them
/// off for the process (below): backed by huge pages, its arenas kept
/// 10 MiB resident in an idle proxy, against 0.6 MiB without them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // On a host whose transparent huge pages are `always`, the kernel backs
    // the allocator's arenas with them whether it asks or not. This comes
    // after the runtime's first allocations (two huge pages, measured);
    // `MIMALLOC_ALLOW_THP=0` in the environment turns them off before those
    // too (the container image sets it).
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("note: transparent huge pages stay on for this process: {e}");
    }
    let cli = Cli::parse();
    if let Some(Command::Check { file }) = &cli.command {
        return check(file);
    }
    init_logging(cli.log_format);
    if let Some(reference) = cli.kube_configmap.clone() {
        return run_from_configmap(&cli, &reference);
    }
    if cli.gateway_api {
        return run_gateway(&cli);
    }
    let Some(path) = cli.config.clone() else {
        eprintln!("error: --config FILE is required (or use `sluice-proxy check FILE`)");
        return ExitCode::from(2);
    };
    let config = match sluice_proxy::store::read_config_file(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}:\n{e}", path.display());
            return ExitCode::from(2);
        }
    };
    runtime().block_on(async move {
        let options = sluice_proxy::StartOptions {
            watch_file: Some(path.clone()),
            drain_timeout: cli.drain_timeout,
            threads: Some(workers(&cli)),
        };
        let handle = match sluice_proxy::start(config, options).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let mut handle = handle;
        let failure = tokio::select! {
            _ = wait_for_signal() => None,
            why = handle.watcher_stopped() => Some(why),
        };
        finish(handle, cli.drain_delay, failure).await
    })
}

/// The drain sequence: readiness fails first, the listeners keep accepting
/// for `delay`, then they close and in-flight requests get the drain
/// timeout; the admin listener answers until the very end.
async fn drain(handle: sluice_proxy::ProxyHandle, delay: Duration) {
    tracing::info!(?delay, "draining: /readyz now fails, still serving");
    handle.begin_drain();
    tokio::time::sleep(delay).await;
    tracing::info!("closing the listeners; draining in-flight requests");
    handle.shutdown().await;
}

fn workers(cli: &Cli) -> usize {
    cli.workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1)
}

fn runtime() -> tokio::runtime::Runtime {
    // Requests are served on dedicated per-core threads (see `--workers`);
    // this runtime only runs the admin API, config watchers and signals.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn run_from_configmap(cli: &Cli, reference: &str) -> ExitCode {
    let (ns, name) = match sluice_proxy::kube_source::parse_reference(reference) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: --kube-configmap: {e}");
            return ExitCode::from(2);
        }
    };
    let drain_timeout = cli.drain_timeout;
    let drain_delay = cli.drain_delay;
    let threads = workers(cli);
    runtime().block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: --kube-configmap: no Kubernetes credentials (in-cluster or kubeconfig): {e}");
                return ExitCode::from(2);
            }
        };
        let (text, config) = match sluice_proxy::kube_source::fetch(client.clone(), &ns, &name).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let options = sluice_proxy::StartOptions {
            watch_file: None,
            drain_timeout,
            threads: Some(threads),
        };
        let handle = match sluice_proxy::start(config, options).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: ConfigMap {ns}/{name}: {e}");
                return ExitCode::from(2);
            }
        };
        handle
            .store
            .metrics()
            .set_config_digest(&sluice_proxy::kube_source::digest(&text));
        let mut follower =
            sluice_proxy::kube_source::follow(client, ns, name, handle.store.clone());
        let mut handle = handle;
        let failure = tokio::select! {
            _ = wait_for_signal() => None,
            why = handle.watcher_stopped() => Some(why),
            ended = &mut follower => Some(match ended {
                Ok(()) => "the ConfigMap follower stopped".to_string(),
                Err(e) => format!("the ConfigMap follower failed: {e}"),
            }),
        };
        follower.abort();
        finish(handle, drain_delay, failure).await
    })
}

fn run_gateway(cli: &Cli) -> ExitCode {
    let options = sluice_proxy::gateway::Options {
        controller: cli.gateway_controller_name.clone(),
        bind: cli.gateway_bind.clone(),
        admin_listen: cli.gateway_admin_listen.clone(),
    };
    let (drain_timeout, drain_delay, threads) = (cli.drain_timeout, cli.drain_delay, workers(cli));
    runtime().block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: --gateway-api: no Kubernetes credentials (in-cluster or kubeconfig): {e}");
                return ExitCode::from(2);
            }
        };
        let mut gateway = match sluice_proxy::gateway::Gateway::connect(client, options).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let config = gateway.initial_config().await;
        let options = sluice_proxy::StartOptions { watch_file: None, drain_timeout, threads: Some(threads) };
        let mut handle = match sluice_proxy::start(config, options).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: --gateway-api: {e}");
                return ExitCode::from(2);
            }
        };
        let mut follower = gateway.follow(handle.store.clone());
        let failure = tokio::select! {
            _ = wait_for_signal() => None,
            why = handle.watcher_stopped() => Some(why),
            _ = &mut follower => Some("the Gateway API follower stopped".to_string()),
        };
        follower.abort();
        finish(handle, drain_delay, failure).await
    })
}

/// Drains; exit 0 after a signal, 1 after a background task stopped (the
/// supervisor restarts the proxy rather than let it serve a frozen config).
async fn finish(
    handle: sluice_proxy::ProxyHandle,
    delay: Duration,
    failure: Option<String>,
) -> ExitCode {
    if let Some(why) = &failure {
        tracing::error!("{why}; draining and exiting so that the proxy is restarted");
    }
    drain(handle, delay).await;
    tracing::info!("stopped");
    if failure.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    let result = sluice_proxy::store::read_config_file(file).and_then(|c| {
        c.validate()?;
        sluice_proxy::Store::new(c, sluice_proxy::Metrics::new()).map(|_| ())
    });
    match result {
        Ok(()) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: invalid", file.display());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            ExitCode::from(2)
        }
    }
}

/// SIGTERM or SIGINT. SIGHUP never stops the proxy (by default it would
/// kill it on the spot, with no drain): with `--config` it re-reads the
/// file (see `sluice_proxy::store::watch_file`), else it is only logged.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => tracing::info!("SIGHUP received; the proxy keeps running (it re-reads a --config file; SIGTERM stops it)"),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a file or a log collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
