//! gRPC through a `protocol: http2` route with the reference grpcio client and
//! server (Python), not our own framing: unary, server streaming, trailing
//! metadata and non-OK statuses all arrive intact, in plain h2c and over TLS
//! on both sides, and the proxy classifies each call by its `grpc-status`
//! (trailers-only and trailers alike), though every one of them is HTTP 200.

use std::path::Path;
use std::process::Command;

use sluice_tests::*;

fn interop(tls: Option<&Path>) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let python = root.join("target/py-venv/bin/python");
    assert!(
        python.is_file()
            && Command::new(&python)
                .args(["-c", "import grpc"])
                .status()
                .is_ok_and(|s| s.success()),
        "grpcio is missing: tests/run installs it (python3 -m venv target/py-venv && target/py-venv/bin/pip install grpcio)"
    );
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("tests/grpc/interop.py"))
        .arg(bin("sluice-proxy"));
    if let Some(dir) = tls {
        cmd.arg("--tls").arg(dir);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "interop script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_calls_and_classification(result: &serde_json::Value) {
    assert_eq!(result["unary"], "echo:hi");
    assert_eq!(result["trailer"], "kept");
    assert_eq!(result["stream"], serde_json::json!(["x#0", "x#1", "x#2"]));
    assert_eq!(
        result["fail"],
        serde_json::json!(["NOT_FOUND", "nothing here"])
    );
    assert_eq!(result["internal"], serde_json::json!(["INTERNAL", "boom"]));
    assert_eq!(
        result["stream_then_fail"],
        serde_json::json!([["one", "two"], "UNAVAILABLE"])
    );
    let m = Scrape::parse(result["metrics"].as_str().unwrap());
    let count = |class: &str| {
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "grpc"),
                ("code", "200"),
                ("classification", class),
                ("decision", "weight"),
            ],
        )
    };
    // INTERNAL (trailers-only) and UNAVAILABLE (in trailers after messages)
    // are the server's failures; OK twice and NOT_FOUND are not.
    assert_eq!(count("failure"), 2.0, "{}", result["metrics"]);
    assert_eq!(count("success"), 3.0, "{}", result["metrics"]);
    assert_eq!(
        m.sum("sluice_requests_total", &[("route", "grpc")]),
        5.0,
        "every call is HTTP 200"
    );
}

#[test]
fn grpcio_calls_through_the_proxy_are_classified_by_grpc_status() {
    assert_calls_and_classification(&interop(None));
}

#[test]
fn grpcio_calls_over_tls_on_both_sides_are_classified_by_grpc_status() {
    let dir = TempDir::new("grpc-tls");
    let ca = TestCa::new("sluice grpc test CA");
    for stem in ["proxy", "upstream"] {
        let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.path.join(format!("{stem}.crt")), cert).unwrap();
        std::fs::write(dir.path.join(format!("{stem}.key")), key).unwrap();
    }
    std::fs::write(dir.path.join("ca.crt"), &ca.cert_pem).unwrap();
    assert_calls_and_classification(&interop(Some(&dir.path)));
}
