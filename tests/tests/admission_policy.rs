//! The admission policy in `deploy/operator/admission-policy.yaml`: bad
//! `sluice.dev/*` annotations refused at `kubectl apply`, with the meaning
//! of the operator's own Event.
//!
//! - Through the real `kubectl` on the fake API server (which evaluates the
//!   policy with a CEL interpreter): every bad-value case of the operator's
//!   own test (`annotations::BAD_VALUE_CASES`) is refused naming the same
//!   annotation, except the insides of YAML values CEL cannot parse, which
//!   are admitted and left to the operator (the policy's comments say so).
//! - In process, on thousands of generated annotation sets (seeded, seed
//!   printed; `SLUICE_POLICY_SEED` replays one): the policy admits exactly
//!   the sets the operator's parser accepts, and when both refuse, the
//!   policy names the annotation the parser names. For the YAML-valued
//!   annotations only one way holds: the policy never refuses what the
//!   parser accepts.
//! - The policy's lists equal the operator's: `annotations::KNOWN` and the
//!   proxy's latency histogram bounds.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Value, json};
use sluice_operator::kube::annotations::{self, BAD_VALUE_CASES, CANARY, KNOWN};
use sluice_tests::fake_kube::admission_policy::{self, Attributes};
use sluice_tests::fake_kube::{FakeKube, Options};
use sluice_tests::*;

/// Annotations whose values are YAML documents CEL cannot parse: the
/// policy checks their outline only.
const STRUCTURED: [&str; 3] = [
    "sluice.dev/webhooks",
    "sluice.dev/match",
    "sluice.dev/proxy-resources",
];

fn policy_path() -> std::path::PathBuf {
    workspace_root().join("deploy/operator/admission-policy.yaml")
}

fn policy_documents() -> Vec<Value> {
    let text = std::fs::read_to_string(policy_path()).expect("read the policy");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(d).expect("YAML");
            serde_json::to_value(v).expect("JSON")
        })
        .collect()
}

fn policy() -> Value {
    policy_documents()
        .into_iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .expect("the policy document")
}

fn deployment(name: &str, annotations: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.test/app:1"}]},
            },
        },
    })
}

/// The policy's denials for a Deployment created with `annotations`.
fn denials(policy: &Value, annotations: &BTreeMap<String, String>) -> Vec<String> {
    let object = deployment("web", annotations);
    admission_policy::evaluate(policy, &Attributes::deployment_created("web", &object))
        .expect("the policy matches Deployments")
        .into_iter()
        .map(|d| {
            // Only a number out of a double's range (1e400) errs, as
            // cel-go's double() does: still a refusal, worded as an error.
            assert!(
                !d.error || d.message.contains("out of a double's range"),
                "an expression erred: {}",
                d.message
            );
            d.message
        })
        .collect()
}

/// The string literals of a CEL list expression.
fn literals(expr: &str) -> Vec<String> {
    expr.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn variable<'a>(policy: &'a Value, name: &str) -> &'a str {
    policy["spec"]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["expression"].as_str())
        .unwrap_or_else(|| panic!("no variable {name}"))
}

#[test]
fn every_example_deployment_is_admitted() {
    let policy = policy();
    let mut seen = 0;
    for dir in [
        "deploy/examples/podinfo",
        "deploy/examples/blue-green",
        "deploy/examples/experiment",
    ] {
        let out = Command::new(kubectl())
            .args([
                "kustomize",
                &workspace_root().join(dir).display().to_string(),
            ])
            .output()
            .expect("run kubectl kustomize");
        let text = String::from_utf8_lossy(&out.stdout);
        for d in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(d).expect("YAML");
            let doc = serde_json::to_value(v).expect("JSON");
            if doc["kind"] != "Deployment" {
                continue;
            }
            let set: BTreeMap<String, String> =
                serde_json::from_value(doc["metadata"]["annotations"].clone()).unwrap_or_default();
            assert_eq!(denials(&policy, &set), Vec::<String>::new(), "{dir}");
            seen += 1;
        }
    }
    assert!(seen >= 3, "only {seen} example Deployments");
}

#[test]
fn the_policys_annotation_names_are_the_operators() {
    let policy = policy();
    let mut known = literals(variable(&policy, "known"));
    let mut want: Vec<String> = KNOWN.iter().map(|k| k.to_string()).collect();
    known.sort();
    want.sort();
    assert_eq!(
        known, want,
        "the policy's `known` list vs annotations::KNOWN"
    );
    let mut written = literals(variable(&policy, "operatorWritten"));
    written.sort();
    let mut want: Vec<String> = annotations::OPERATOR_WRITTEN
        .iter()
        .map(|k| k.to_string())
        .collect();
    want.sort();
    assert_eq!(written, want, "annotations the operator writes itself");
    // Every known annotation has a validation that names it.
    let text = std::fs::read_to_string(policy_path()).unwrap();
    for k in KNOWN {
        assert!(
            text.contains(&format!("'annotation {k}'")),
            "no validation names {k}"
        );
    }
    let bounds: Vec<u64> = variable(&policy, "bucketBoundsUs")
        .trim_matches(['[', ']'])
        .split(',')
        .map(|b| b.trim().parse().unwrap())
        .collect();
    assert_eq!(bounds, sluice_proxy::metrics::DURATION_BUCKET_BOUNDS_US);
}

/// Runs kubectl with the fake's kubeconfig; (success, stdout + stderr).
fn kubectl_run(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(kubectl())
        .env("KUBECONFIG", kubeconfig)
        .env(
            "HOME",
            kubeconfig.parent().expect("the kubeconfig's directory"),
        )
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_refuses_each_bad_annotation_of_the_operators_tests_naming_it() {
    let fake = FakeKube::start_with(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let dir = TempDir::new("admission-policy");
    let kubeconfig = dir.path.join("config");
    fake.kubeconfig(&kubeconfig);
    let (ok, out) = kubectl_run(
        &kubeconfig,
        &[
            "apply",
            "-k",
            &workspace_root()
                .join("deploy/operator")
                .display()
                .to_string(),
        ],
    );
    assert!(ok, "kubectl apply -k deploy/operator: {out}");
    assert!(
        out.contains("validatingadmissionpolicy.admissionregistration.k8s.io/sluice-annotations created")
            && out.contains("validatingadmissionpolicybinding.admissionregistration.k8s.io/sluice-annotations created"),
        "{out}"
    );
    let apply = |name: &str, annotations: &BTreeMap<String, String>| -> (bool, String) {
        let file = dir.path.join(format!("{name}.json"));
        std::fs::write(&file, deployment(name, annotations).to_string()).unwrap();
        kubectl_run(&kubeconfig, &["apply", "-f", &file.display().to_string()])
    };
    let (mut checked, mut left_to_operator) = (0, 0);
    for (i, &(key, value, _)) in BAD_VALUE_CASES.iter().enumerate() {
        let set: BTreeMap<String, String> = [(CANARY, "enabled"), (key, value)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let operator = annotations::parse(&set, true).expect_err("the operator refuses it");
        let (ok, out) = apply(&format!("bad-{i}"), &set);
        if ok {
            // Inside a YAML value: left to the operator's Event.
            assert!(
                STRUCTURED.contains(&key),
                "{key}={value:?} was admitted: {out}"
            );
            left_to_operator += 1;
            continue;
        }
        assert!(!ok, "{key}={value:?} was admitted: {out}");
        assert!(
            out.contains(&format!(
                // kubectl words an Invalid Status from its details: the
                // kind, the name, and the one cause (no field).
                "The deployments \"bad-{i}\" is invalid: : ValidatingAdmissionPolicy 'sluice-annotations' with binding 'sluice-annotations' denied request: annotation {}",
                operator.annotation
            )),
            "{key}={value:?}: the refusal should name {} as the operator does ({operator}):\n{out}",
            operator.annotation
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} cases refused at apply");
    println!("{checked} cases refused at apply, {left_to_operator} left to the operator");
    // A setting only the sequential gate reads, with the threshold gate
    // (which would ignore it, so an out-of-range alpha went unseen): refused
    // at apply as the operator and `sluice rollout --gate threshold` do.
    let threshold: BTreeMap<String, String> = [
        (CANARY, "enabled"),
        ("sluice.dev/gate", "threshold"),
        ("sluice.dev/alpha", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let operator = annotations::parse(&threshold, true).expect_err("the operator refuses it");
    assert_eq!(operator.annotation, "sluice.dev/alpha");
    let (ok, out) = apply("threshold-alpha", &threshold);
    assert!(
        !ok && out.contains(
            "denied request: annotation sluice.dev/alpha is invalid with sluice.dev/gate: threshold"
        ),
        "{out}"
    );
    // Good annotations pass, and so do the operator's own later writes.
    let good: BTreeMap<String, String> = [
        (CANARY, "enabled"),
        ("sluice.dev/steps", "5,20,50"),
        ("sluice.dev/interval", "1m30s"),
        ("sluice.dev/latency", "p99<=500ms"),
        ("sluice.dev/port", "http"),
        ("sluice.dev/webhooks", "- name: x\n  url: http://a/\n"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (ok, out) = apply("good", &good);
    assert!(ok, "{out}");
    let (ok, out) = kubectl_run(
        &kubeconfig,
        &[
            "annotate",
            "deployment",
            "good",
            "sluice.dev/phase=Progressing",
            "sluice.dev/interval=3s",
            "--overwrite",
        ],
    );
    assert!(
        !ok && out.contains("annotation sluice.dev/interval: `3s` is invalid"),
        "{out}"
    );
    let (ok, out) = kubectl_run(
        &kubeconfig,
        &[
            "annotate",
            "deployment",
            "good",
            "sluice.dev/phase=Progressing",
        ],
    );
    assert!(ok, "the operator's own annotation: {out}");
}

// === generated annotation sets ===

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// Valid values, near misses and oddities for each annotation.
fn candidates(key: &str) -> Vec<&'static str> {
    let durations = [
        "30s",
        "1m",
        "1m30s",
        "500ms",
        "0s",
        "0ms",
        "10m",
        "600s",
        "601s",
        "2s",
        "5s",
        "4.999s",
        "1h",
        "25h",
        "24h",
        "1.5h",
        ".5s",
        "5.s",
        "1s.5m",
        "1sm",
        "1",
        "s",
        "",
        " 5s ",
        "5 s",
        "-5s",
        "1e3s",
        "8760h",
        "8761h",
        "99999999999999999999h",
        "100ms200ms",
        "0.0000000001s",
    ];
    let numbers = [
        "0.01", "0.5", "0.49", "0", "-0.1", "1.0", "1.5", "2", "1e-3", "1E-2", "+0.1", ".1", "1.",
        "nan", "inf", "1e400", "abc", "", " 0.2 ", "0x1p-2", "1_0",
    ];
    let percents = [
        "99", "99.5", "100", "101", "0", "-0", "0.001", "50%", "150%", "10 %", "10%%", "%", "abc",
        "99.999", "1e2", " 5 ",
    ];
    let whole = [
        "0",
        "1",
        "3",
        "+3",
        "007",
        "-1",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "1.5",
        "",
        "two",
        " 4 ",
    ];
    let names = ["my-config", "my.config", "Hooks", "", "a", "a_b", "x y"];
    let owned: Vec<&'static str> = match key.trim_start_matches("sluice.dev/") {
        "canary" => vec!["enabled", "Enabled", "true", ""],
        "gate" => vec!["sequential", "threshold", "magic", " threshold"],
        "alpha" | "beta" | "rho0" | "rho-max" => numbers.to_vec(),
        "failure-floor" | "success-rate" => percents.to_vec(),
        "latency-tolerance" | "mirror" => percents.to_vec(),
        "latency-bound" => vec![
            "300ms,1s",
            "270ms",
            "250ms",
            "300ms,,1s",
            "",
            ",",
            "1m",
            "30s",
            "0.3s",
            "22500ms",
            "100ms200ms",
            "1ms",
            "0.5ms",
        ],
        "incident-allowance"
        | "warmup"
        | "baseline"
        | "max-duration"
        | "scrape-interval"
        | "interval"
        | "progress-deadline"
        | "soak"
        | "experiment-duration"
        | "affinity-max-age"
        | "request-timeout"
        | "connect-timeout"
        | "idle-timeout"
        | "upstream-idle-timeout"
        | "tunnel-idle-timeout"
        | "abort-scale-down-delay" => durations.to_vec(),
        "when-undecided" => vec!["hold", "promote", "rollback", " hold ", "wait"],
        "steps" => vec![
            "10,25,50",
            "10,5",
            "0,10",
            "10,abc",
            "150",
            "0.5, 33.33",
            "33.333",
            "10,10",
            "100",
            "",
            "5",
            "50",
            "10,,20",
            "1e1,20",
        ],
        "failure-limit" | "min-requests" | "iterations" | "rollback-window" | "keep-releases" => {
            whole.to_vec()
        }
        "latency" => vec![
            "p95<=500ms",
            "p95<500ms",
            "q95<=1s",
            "p100<=1s",
            "p95<=fast",
            "p99<=270ms",
            "p99<=22500ms",
            "p99<=1m",
            "p95<=500ms, p99.9<=1s",
            "",
            ",",
            " p95 <= 1s ",
            "p 95<=1s",
            "p95<=1s<=2s",
            "p0<=1ms",
            "p50<=100ms,",
        ],
        "approval" => vec!["auto", "manual", "sometimes", " auto"],
        "strategy" => vec!["canary", "blue-green", "experiment", "bluegreen"],
        "affinity-cookie" => vec!["session", "a b", "", "x;y", "ok!#$"],
        "affinity-header" => vec!["x-user", "X-User", "bad header", "", "x:y"],
        "mirror-max-body" => vec![
            "64KiB",
            "1MiB",
            "10 MiB",
            "1024",
            "",
            "KiB",
            "1kb",
            "18446744073709551615",
            "18446744073709551616",
            "17179869184GiB",
            "17179869183GiB",
        ],
        "mirror-methods" => vec!["GET,HEAD", "get", "GET,FOO", "", ",", " POST , PUT "],
        "metrics" => vec!["proxy", "prometheus", "datadog", " proxy"],
        "metrics-template" => vec![
            "proxy",
            "envoy-gateway",
            "istio",
            "configmap:tpl/template.yaml",
            "configmap:tpl",
            "configmap:Tpl/x",
            "configmap:tpl/a/b",
            "configmap:-tpl/x",
            "linkerd",
            "",
        ],
        "port" => vec![
            "http",
            "8080",
            "0",
            "65536",
            "-1",
            "+80",
            "",
            " ",
            "99999999999",
            "-99999999999",
            "2147483647",
            "2147483648",
            "-2147483648",
            "-2147483649",
            "0080",
        ],
        "checks" | "access" | "notify" => names.to_vec(),
        "webhooks" => vec![
            "my-hooks",
            "Hooks",
            "- name: x\n  url: http://a/\n",
            "- url: http://a/\n  type: rolout\n",
            "[]",
            "  - name: y\n    url: http://b/\n",
            "",
        ],
        "match" => vec![
            "[{header: x-canary, value: \"1\"}]",
            "x-canary=1",
            "[]",
            "- {cookie: beta, value: yes}",
            "[{header: x-canary}]",
            "",
            "{header: a}",
        ],
        "proxy-resources" => vec![
            "{requests: {cpu: 250m}}",
            "{}",
            "[]",
            "",
            "requests: {memory: 64Mi}",
            "{requests: {gpu: 1}}",
        ],
        "proxy-replicas" => vec!["2", "0", "101", "100", "+5", "-1", "two", "0010"],
        "proxy-autoscale" => vec![
            "min=2,max=10,cpu=70",
            "min=3,max=2,cpu=70",
            "min=1,max=5",
            "min=1,max=5,cpu=70%",
            "min=1,max=5,cpu=70,mem=3",
            "min=1,min=2,max=5,cpu=7",
            "min = 1 , max = 5 , cpu = 50",
            "min=0,max=5,cpu=5",
            "min=1,max=101,cpu=5",
            "",
            "min=1,max=5,cpu=0",
        ],
        "canary-scale" => vec!["full", "proportional", "half", " full"],
        "baseline-arm" => vec!["true", "true", "false", "yes", "True", " true", ""],
        "http-ports" => vec![
            "http,8080",
            "http",
            "80,80",
            "80,+80",
            "0",
            "65536",
            "Http",
            "a-",
            "",
            "web,,api",
            "abcdefghijklmnop",
            "123",
        ],
        _ => vec!["1", "", "x"],
    };
    owned
}

fn generated_set(rng: &mut Rng) -> BTreeMap<String, String> {
    let mut set = BTreeMap::new();
    if !rng.next().is_multiple_of(8) {
        set.insert(CANARY.to_string(), "enabled".to_string());
    }
    for _ in 0..(rng.next() % 5) {
        let key = match rng.next() % 20 {
            0 => rng
                .pick(&[
                    "sluice.dev/stepz",
                    "sluice.dev/phase",
                    "sluice.dev/Canary",
                    "example.com/x",
                ])
                .to_string(),
            _ => rng.pick(KNOWN).to_string(),
        };
        let value = match rng.next() % 10 {
            0 => {
                let alphabet = b"0123456789.,%msh-+ pe<=aZ";
                (0..rng.next() % 8)
                    .map(|_| *rng.pick(alphabet) as char)
                    .collect::<String>()
            }
            _ => rng.pick(&candidates(&key)).to_string(),
        };
        set.insert(key, value);
    }
    set
}

#[test]
fn the_policy_and_the_parser_accept_and_refuse_the_same_generated_annotation_sets() {
    let seed: u64 = std::env::var("SLUICE_POLICY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("seed {seed} (SLUICE_POLICY_SEED={seed} replays it)");
    let policy = policy();
    let mut rng = Rng(seed);
    let (mut accepted, mut refused, mut left_to_operator) = (0, 0, 0);
    for _ in 0..3000 {
        let set = generated_set(&mut rng);
        let parsed = annotations::parse(&set, true);
        let denied = denials(&policy, &set);
        match (&parsed, denied.is_empty()) {
            (Ok(_), true) => accepted += 1,
            (Ok(_), false) => panic!(
                "seed {seed}: the policy refuses what the operator accepts: {set:?}\n{denied:?}"
            ),
            (Err(e), false) => {
                refused += 1;
                // Every problem the operator sees (lint); the policy names
                // one of them. (The first may be inside a YAML value the
                // policy cannot read.)
                let problems = annotations::lint(&set, true);
                let named = problems.iter().any(|p| {
                    denied.iter().any(|d| {
                        d.starts_with(&format!("annotation {}", p.annotation))
                            || d.contains(&format!(" {}", p.annotation))
                            || d.contains(&format!("'{}'", p.annotation))
                    })
                });
                assert!(
                    named,
                    "seed {seed}: the operator names {} ({e}), the policy: {denied:?}\n{set:?}",
                    e.annotation
                );
            }
            (Err(e), true) => {
                assert!(
                    STRUCTURED.contains(&e.annotation.as_str())
                        || (e.annotation == "sluice.dev/proxy-autoscale"
                            && set.contains_key("sluice.dev/proxy-resources")),
                    "seed {seed}: the policy admits what the operator refuses: {e}\n{set:?}"
                );
                left_to_operator += 1;
            }
        }
    }
    println!("accepted {accepted}, refused {refused}, left to the operator {left_to_operator}");
    assert!(accepted > 300 && refused > 300, "a lopsided sample");
}
