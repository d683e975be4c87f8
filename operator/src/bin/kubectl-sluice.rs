//! `kubectl sluice`: the kubectl plugin (install this binary on PATH as
//! `kubectl-sluice`). Exit codes: 0 ok, 2 usage error or unknown name,
//! 4 Kubernetes API error; `status`: 0 succeeded, 1 failed, 3 in progress.
//!
//! The flags kubectl users type without thinking work as in kubectl:
//! `-n`, `--kubeconfig`, `--context`, `get -A`, `get -o json|yaml`, and
//! `completion bash|zsh|fish` prints a completion script.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_operator::kube::plugin::{self, Plugin, PluginError};

#[derive(Parser)]
#[command(
    name = "kubectl sluice",
    version,
    about = "Watch and steer Sluice canary releases"
)]
struct Cli {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// How `get` prints.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Json,
    Yaml,
}

/// Shells `completion` writes a script for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
enum Command {
    /// Phase, weight, steps and last checks of one or every canaried Deployment.
    Get {
        name: Option<String>,
        /// Redraw whenever a release changes (an API watch), until interrupted.
        #[arg(short, long, conflicts_with = "output")]
        watch: bool,
        /// Every namespace (a NAMESPACE column is added).
        #[arg(short = 'A', long, conflicts_with = "name")]
        all_namespaces: bool,
        /// Print the releases as JSON or YAML (the status Sluice keeps on each).
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// Check a Deployment's sluice.dev/ annotations, from the cluster (NAME) or a file (-f),
    /// and print every problem at once: exit 0 when there is none, 2 otherwise.
    Lint {
        #[arg(required_unless_present = "filename")]
        name: Option<String>,
        /// A YAML file of one or more Deployments (`-` reads stdin), as `kubectl apply -f` takes.
        #[arg(short = 'f', long, conflicts_with = "name")]
        filename: Option<std::path::PathBuf>,
    },
    /// Print a shell completion script: `source <(kubectl sluice completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Approve a release held for manual promotion, or with --full skip the remaining steps.
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
    },
    /// Roll the release back now.
    Abort { name: String },
    /// Release a rolled-back revision again.
    Retry { name: String },
    /// Write the release report of NAME (its latest release, or --revision's) as one
    /// self-contained HTML file to stdout: `kubectl sluice report web > web.html`.
    Report {
        name: String,
        /// The revision whose (latest) release to report.
        #[arg(long)]
        revision: Option<String>,
    },
    /// Serve the web dashboard on 127.0.0.1 with your kubeconfig and RBAC (every action
    /// is yours), until interrupted.
    Dashboard {
        /// The local port.
        #[arg(long, default_value_t = 3100)]
        port: u16,
    },
    /// Wait for the release of the Deployment's current generation to end:
    /// exit 0 succeeded, 1 failed, 3 still in progress at the timeout (for CI).
    Status {
        name: String,
        /// Give up after this long (exit 3); 0 or unset waits without limit,
        /// as `kubectl rollout status` does.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_proxy::config::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(run(cli))
}

/// A client from the kubeconfig as kubectl would pick it: `--kubeconfig`
/// or the default places, and `--context` or the current context.
async fn client(cli: &Cli) -> Result<kube::Client, String> {
    let options = kube::config::KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("--context {context}: {e}"))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| format!("cannot reach Kubernetes with the kubeconfig: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot reach Kubernetes: {e}"))
}

/// Every problem of each Deployment in `docs` (YAML documents), one line
/// each, named by the Deployment.
fn lint_documents(text: &str, source: &str) -> Result<(usize, usize, String), String> {
    use serde::Deserialize;
    let mut out = String::new();
    let (mut deployments, mut problems) = (0, 0);
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc)
            .map_err(|e| format!("{source}: document {}: {e}", i + 1))?;
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("Deployment") {
            continue;
        }
        deployments += 1;
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let annotations: std::collections::BTreeMap<String, String> = value["metadata"]
            .get("annotations")
            .map(|a| serde_yaml_ng::from_value(a.clone()))
            .transpose()
            .map_err(|e| format!("{source}: Deployment {name}: annotations: {e}"))?
            .unwrap_or_default();
        for p in sluice_operator::kube::annotations::lint(&annotations, true) {
            problems += 1;
            out.push_str(&format!("Deployment {name}: {p}\n"));
        }
    }
    Ok((deployments, problems, out))
}

async fn run(cli: Cli) -> ExitCode {
    if let Command::Lint {
        filename: Some(path),
        ..
    } = &cli.command
    {
        let text = if path.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                Ok(_) => text,
                Err(e) => {
                    eprintln!("error: -f -: {e}");
                    return ExitCode::from(2);
                }
            }
        } else {
            match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: -f {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
        };
        return match lint_documents(&text, &path.display().to_string()) {
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
            Ok((0, _, _)) => {
                eprintln!("error: {} holds no Deployment", path.display());
                ExitCode::from(2)
            }
            Ok((n, 0, _)) => {
                println!("{n} Deployment(s): no problem");
                ExitCode::SUCCESS
            }
            Ok((_, _, problems)) => {
                print!("{problems}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Completion { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        let shell = match shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        };
        clap_complete::generate(
            shell,
            &mut command,
            "kubectl-sluice",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let client = match client(&cli).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(4);
        }
    };
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let p = Plugin { client, namespace };
    let result: Result<ExitCode, PluginError> = async {
        match cli.command {
            Command::Report { name, revision } => {
                print!("{}", p.report(&name, revision.as_deref()).await?);
                Ok(ExitCode::SUCCESS)
            }
            Command::Dashboard { port } => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let listener = sluice_operator::dashboard::bind(addr)
                    .await
                    .map_err(|e| PluginError::Usage(format!("--port: {e}")))?;
                let plugin = std::sync::Arc::new(Plugin {
                    client: p.client.clone(),
                    namespace: p.namespace.clone(),
                });
                let served = sluice_operator::dashboard::serve(
                    listener,
                    sluice_operator::dashboard::Source::Kube(plugin),
                );
                // The login URL: only a browser that opens it gets a
                // session, so another local user cannot act with this
                // user's kubeconfig.
                println!(
                    "Sluice dashboard on {} (namespace {}); Ctrl-C to stop",
                    served.url, p.namespace
                );
                let _ = tokio::signal::ctrl_c().await;
                served.task.abort();
                Ok(ExitCode::SUCCESS)
            }
            Command::Get {
                name,
                watch,
                all_namespaces,
                output,
            } => {
                // A watch wakes the redraw; the AGE column is refreshed
                // every 30 s even when nothing changes.
                // The watch's initial list redraws too: a change between
                // the first frame's list and the watch would be missed.
                let mut changes = Box::pin(p.changes(all_namespaces));
                loop {
                    let releases = match &name {
                        Some(n) => vec![p.release(n).await?],
                        None if all_namespaces => p.releases_everywhere().await?,
                        None => p.releases().await?,
                    };
                    let text = match (output, &name) {
                        (Some(format), _) => {
                            let value = match &name {
                                Some(_) => serde_json::to_value(&releases[0]),
                                None => serde_json::to_value(&releases),
                            }
                            .expect("a release serializes");
                            match format {
                                Format::Json => format!(
                                    "{}\n",
                                    serde_json::to_string_pretty(&value).expect("JSON")
                                ),
                                Format::Yaml => serde_yaml_ng::to_string(&value).expect("YAML"),
                            }
                        }
                        (None, Some(_)) => plugin::detail(&releases[0]),
                        (None, None) => plugin::table(&releases, all_namespaces),
                    };
                    if watch {
                        print!("\x1b[2J\x1b[H{text}");
                    } else {
                        print!("{text}");
                    }
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    if !watch {
                        return Ok(ExitCode::SUCCESS);
                    }
                    use futures::StreamExt;
                    let next = tokio::time::timeout(Duration::from_secs(30), changes.next());
                    match next.await {
                        // Nothing for 30 s: redraw for the ages.
                        Err(_) => {}
                        Ok(None) => return Ok(ExitCode::SUCCESS),
                        // The watch restarts by itself (a fresh list).
                        Ok(Some(Err(e))) => {
                            eprintln!("{e}; watching again");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Ok(Some(Ok(()))) => {
                            // A burst of changes (a release step writes
                            // several objects) draws once.
                            let quiet = tokio::time::sleep(Duration::from_millis(200));
                            tokio::pin!(quiet);
                            loop {
                                tokio::select! {
                                    _ = &mut quiet => break,
                                    more = changes.next() => if more.is_none() { break },
                                }
                            }
                        }
                    }
                }
            }
            Command::Promote { name, full } => {
                println!("{}", p.promote(&name, full).await?);
                Ok(ExitCode::SUCCESS)
            }
            Command::Abort { name } => {
                println!("{}", p.abort(&name).await?);
                Ok(ExitCode::SUCCESS)
            }
            Command::Retry { name } => {
                println!("{}", p.retry(&name).await?);
                Ok(ExitCode::SUCCESS)
            }
            Command::Completion { .. } => unreachable!("answered before connecting"),
            Command::Lint { name, .. } => {
                let name = name.expect("a name or -f, as clap checks");
                let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
                    kube::Api::namespaced(p.client.clone(), &p.namespace);
                let Some(d) = api.get_opt(&name).await? else {
                    return Err(PluginError::NotFound(format!(
                        "no Deployment `{name}` in namespace {}",
                        p.namespace
                    )));
                };
                let annotations = d.metadata.annotations.clone().unwrap_or_default();
                let problems = sluice_operator::kube::annotations::lint(&annotations, true);
                if problems.is_empty() {
                    println!("Deployment {name}: no problem");
                    Ok(ExitCode::SUCCESS)
                } else {
                    for p in problems {
                        println!("Deployment {name}: {p}");
                    }
                    Ok(ExitCode::from(2))
                }
            }
            Command::Status { name, timeout } => {
                let (code, line) = p.status(&name, timeout.filter(|t| !t.is_zero())).await?;
                println!("{line}");
                Ok(ExitCode::from(code))
            }
        }
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
