//! `kubectl sluice`: the kubectl plugin (install this binary on PATH as
//! `kubectl-sluice`). Exit codes: 0 ok, 2 usage error or unknown name,
//! 4 Kubernetes API error; `status`: 0 succeeded, 1 failed, 3 in progress.

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Phase, weight, steps and last checks of one or every canaried Deployment.
    Get {
        name: Option<String>,
        /// Redraw every 2 seconds until interrupted.
        #[arg(short, long)]
        watch: bool,
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

async fn run(cli: Cli) -> ExitCode {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot reach Kubernetes with the kubeconfig: {e}");
            return ExitCode::from(4);
        }
    };
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let p = Plugin { client, namespace };
    let result: Result<ExitCode, PluginError> = async {
        match cli.command {
            Command::Get { name, watch } => loop {
                let text = match &name {
                    Some(n) => plugin::detail(&p.release(n).await?),
                    None => plugin::table(&p.releases().await?),
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
                tokio::time::sleep(Duration::from_secs(2)).await;
            },
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
