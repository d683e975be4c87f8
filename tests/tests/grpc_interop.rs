//! gRPC through a `protocol: http2` route with the reference grpcio client and
//! server (Python), not our own framing: unary, server streaming, trailing
//! metadata and a non-OK status all arrive intact.

use std::path::Path;
use std::process::Command;

use sluice_tests::*;

#[test]
fn grpcio_client_and_server_talk_through_the_proxy() {
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
    let out = Command::new(&python)
        .arg(root.join("tests/grpc/interop.py"))
        .arg(bin("sluice-proxy"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "interop script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["unary"], "echo:hi");
    assert_eq!(result["trailer"], "kept");
    assert_eq!(result["stream"], serde_json::json!(["x#0", "x#1", "x#2"]));
    assert_eq!(
        result["fail"],
        serde_json::json!(["NOT_FOUND", "nothing here"])
    );
}
