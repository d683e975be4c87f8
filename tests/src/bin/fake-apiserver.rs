//! The fake Kubernetes API server as a process, so that real clients such as
//! `kubectl` can be pointed at it:
//!
//! ```sh
//! cargo run -p sluice-tests --bin fake-apiserver -- --listen 127.0.0.1:0 --kubeconfig-out /tmp/kubeconfig
//! KUBECONFIG=/tmp/kubeconfig kubectl get deployments
//! ```
//!
//! It prints `listening on ADDRESS` once it serves, writes a kubeconfig with
//! a cluster-admin token, loads `deploy/operator`'s RBAC, and runs until it
//! is killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sluice_tests::fake_kube::{FakeKube, Options, Readiness};

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "error: {msg}\nusage: fake-apiserver [--listen 127.0.0.1:0] [--kubeconfig-out FILE] [--ready-after 100ms|manual] [--termination-cap 0s]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("static address");
    let mut kubeconfig: Option<PathBuf> = None;
    let mut readiness = Readiness::After(Duration::from_millis(100));
    let mut termination_cap = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--listen" => match value("--listen")
                .and_then(|v| v.parse().map_err(|e| format!("--listen: {e}")))
            {
                Ok(a) => listen = a,
                Err(e) => return usage(&e),
            },
            "--kubeconfig-out" => match value("--kubeconfig-out") {
                Ok(p) => kubeconfig = Some(PathBuf::from(p)),
                Err(e) => return usage(&e),
            },
            "--ready-after" => match value("--ready-after") {
                Ok(v) if v == "manual" => readiness = Readiness::Manual,
                Ok(v) => match sluice_proxy::config::parse_duration(&v) {
                    Ok(d) => readiness = Readiness::After(d),
                    Err(e) => return usage(&format!("--ready-after: {e}")),
                },
                Err(e) => return usage(&e),
            },
            // Pods deleted gracefully are gone after at most this long
            // (default: their whole grace period, as a real cluster).
            "--termination-cap" => match value("--termination-cap").and_then(|v| {
                sluice_proxy::config::parse_duration(&v)
                    .map_err(|e| format!("--termination-cap: {e}"))
            }) {
                Ok(d) => termination_cap = Some(d),
                Err(e) => return usage(&e),
            },
            other => return usage(&format!("unknown argument `{other}`")),
        }
    }
    // The API schema is read at the first request that needs it: a server
    // without it would start, then fail kubectl's first command.
    if let Err(e) = sluice_tests::fake_kube::schema::find_definitions() {
        eprintln!(
            "fake-apiserver: the Kubernetes 1.35 API schema is missing ({e}): install kubernetes-validate into target/py-venv (python3 -m venv target/py-venv && target/py-venv/bin/pip install kubernetes-validate; tests/run does this), or set SLUICE_K8S_SCHEMA to its _definitions.json"
        );
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        let fake = FakeKube::start_with(Options {
            listen,
            readiness,
            termination_cap,
            tls: true,
            ..Options::default()
        })
        .await;
        fake.install_operator_rbac();
        if let Some(path) = &kubeconfig {
            fake.kubeconfig(path);
        }
        println!("listening on {}", fake.addr);
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}
