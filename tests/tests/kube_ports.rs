//! A Service with an HTTP port and a raw TCP port, taken over by `sluice
//! kube` on the fake API server: both keep working through take-over, a
//! release to promotion, and removal of the annotation.
//!
//! The fake runs no pods, so the test plays the cluster's data path with
//! real processes: the app's "pods" are real HTTP backends and TCP echo
//! servers on 127.0.0.1 (one set per image), the proxy is a real
//! `sluice-proxy` serving the config the operator wrote in its ConfigMap,
//! and kube-proxy and cluster DNS are a lookup table: Service `app`'s
//! current selector decides whether a port reaches the proxy or the app's
//! pods, and `<name>.shop.svc:<port>` and `0.0.0.0:<port>` are mapped to
//! 127.0.0.1 ports. Nothing else of the operator's config is changed.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::json;
use sluice_operator::analysis::{Analysis, CheckResult, Outcome};
use sluice_operator::kube::{self as op, Context, KubeStatus, ReplicaConfig};
use sluice_operator::provider::Provider;
use sluice_proxy::kube_source::digest;
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "shop";
const APPS: &str = "apis/apps/v1";

/// The real processes behind one image: its HTTP server and its TCP echo.
struct Pods {
    http: BackendHandle,
    echo: SocketAddr,
}

struct Cluster {
    fake: FakeKube,
    ctx: Arc<Context>,
    clock: Arc<AtomicU64>,
    pods: BTreeMap<&'static str, Pods>,
    /// Container ports of the proxy pod -> 127.0.0.1 ports.
    proxy_ports: BTreeMap<u16, u16>,
    proxy: Option<ProxyHandle>,
    /// The proxy Deployment's listener layout the running proxy was
    /// started with, and whether a rollout onto a new one has begun.
    proxy_layout: String,
    rolling: bool,
}

/// `admin`: the 127.0.0.1 port of the real proxy's admin listener, whose
/// `/metrics` the operator then reads as it reads a proxy pod's (the
/// digest served, and whether the last reload was refused); `None`: the
/// replicas report the ConfigMap as it is now.
fn context(fake: &FakeKube, clock: &Arc<AtomicU64>, admin: Option<u16>) -> Arc<Context> {
    let mut ctx = Context::new(
        fake.operator_client(),
        "test-operator",
        None,
        "sluice-proxy:test".into(),
    );
    let c = clock.clone();
    ctx.now = Arc::new(move || c.load(Ordering::SeqCst) as f64);
    // Every analysis passes: this test is about the data path.
    let script = Arc::new(std::sync::Mutex::new(VecDeque::<Outcome>::new()));
    ctx.make_provider = Arc::new(move |_, _, _| {
        let s = script.clone();
        Provider::Scripted(Box::new(move || {
            let outcome = s.lock().unwrap().pop_front().unwrap_or(Outcome::Pass);
            Analysis {
                canary_requests: Some(100),
                checks: vec![CheckResult {
                    name: "success-rate".into(),
                    outcome,
                    value: Some(100.0),
                    threshold: ">= 99%".into(),
                    ..CheckResult::default()
                }],
                ..Analysis::default()
            }
        }))
    });
    ctx.poll = Duration::from_millis(10);
    if let Some(admin) = admin {
        ctx.proxy_digests = Some(Arc::new(move |_ns: String, app: String| {
            Box::pin(async move {
                let url = format!("http://127.0.0.1:{admin}/metrics");
                // No proxy pod yet: no ready replica.
                let Ok((_, _, body)) = get(&url).await else {
                    return Ok(Vec::new());
                };
                let digest = op::objects::replica_digest(&String::from_utf8_lossy(&body))
                    .unwrap_or_else(|| Err(format!("{url} reports no digest")));
                Ok(vec![ReplicaConfig {
                    pod: format!("{app}-sluice-a"),
                    digest,
                }])
            })
        }));
        return Arc::new(ctx);
    }
    // The proxy replicas report the ConfigMap they serve as it is now.
    let fake = fake.clone();
    ctx.proxy_digests = Some(Arc::new(move |ns: String, app: String| {
        let digest = fake
            .get("api/v1", "configmaps", &ns, &format!("{app}-sluice"))
            .and_then(|cm| cm["data"]["routes.yaml"].as_str().map(digest))
            .ok_or_else(|| "no ConfigMap".to_string());
        let replicas = ["a", "b"]
            .iter()
            .map(|p| ReplicaConfig {
                pod: format!("{app}-sluice-{p}"),
                digest: digest.clone(),
            })
            .collect();
        Box::pin(async move { Ok(replicas) })
    }));
    Arc::new(ctx)
}

impl Cluster {
    async fn new() -> Self {
        Self::with_probe(false).await
    }

    /// `real_probe`: the operator asks the real proxy's metrics which
    /// config it serves (see [`context`]).
    async fn with_probe(real_probe: bool) -> Self {
        // TLS (client certificates) when a person's kubectl takes part.
        let fake = if real_probe {
            FakeKube::start_with(sluice_tests::fake_kube::Options {
                tls: true,
                ..Default::default()
            })
            .await
        } else {
            FakeKube::start().await
        };
        fake.create_namespace("shop");
        fake.install_operator_rbac();
        fake.put(
            "api/v1",
            "services",
            NS,
            json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [
                {"name": "http", "port": 80, "targetPort": 9898},
                {"name": "redis", "port": 6379, "targetPort": 6379},
            ]}}),
        );
        fake.put(
            APPS,
            "deployments",
            NS,
            json!({
                "metadata": {"name": "app", "annotations": {
                    "sluice.dev/canary": "enabled", "sluice.dev/steps": "20,50",
                    "sluice.dev/interval": "10s", "sluice.dev/baseline": "0s"}},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "app"}},
                    "template": {
                        "metadata": {"labels": {"app": "app"}},
                        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [
                            {"name": "http", "containerPort": 9898},
                            {"name": "redis", "containerPort": 6379}]}]},
                    },
                },
            }),
        );
        fake.make_ready(NS, "app");
        let mut pods = BTreeMap::new();
        for (image, name) in [("app:1", "v1"), ("app:2", "v2")] {
            pods.insert(
                image,
                Pods {
                    http: backend(name).await,
                    echo: start_tcp_echo().await,
                },
            );
        }
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let proxy_ports: BTreeMap<u16, u16> = [9898u16, 6379, 9901]
            .into_iter()
            .map(|p| (p, free_port()))
            .collect();
        let ctx = context(&fake, &clock, real_probe.then(|| proxy_ports[&9901]));
        Self {
            fake,
            ctx,
            clock,
            pods,
            proxy_ports,
            proxy: None,
            proxy_layout: String::new(),
            rolling: false,
        }
    }

    async fn tick(&self) {
        let api: Api<Deployment> = Api::namespaced(self.fake.client(), NS);
        let d = api.get("app").await.unwrap();
        op::reconcile(Arc::new(d), self.ctx.clone()).await.unwrap();
    }

    fn image_of(&self, deployment: &str) -> String {
        self.fake
            .get(APPS, "deployments", NS, deployment)
            .unwrap_or_else(|| panic!("no Deployment {deployment}"))["spec"]["template"]["spec"]
            ["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn status(&self) -> Option<KubeStatus> {
        let p = self.fake.get(APPS, "deployments", NS, "app-primary")?;
        serde_json::from_str(p["metadata"]["annotations"]["sluice.dev/status"].as_str()?).ok()
    }

    /// Cluster DNS: `<service>.shop.svc:<port>` to the pods it selects.
    fn resolve(&self, service: &str, port: u16) -> SocketAddr {
        let deployment = match service {
            "app-primary.shop.svc" => "app-primary",
            "app-canary.shop.svc" => "app",
            other => panic!("the operator's config names an unknown Service {other}"),
        };
        let pods = &self.pods[self.image_of(deployment).as_str()];
        match port {
            80 => pods.http.addr,
            6379 => pods.echo,
            other => panic!("no Service port {other}"),
        }
    }

    /// The operator's proxy config, with addresses mapped to 127.0.0.1.
    fn proxy_config(&self) -> sluice_proxy::Config {
        let cm = self
            .fake
            .get("api/v1", "configmaps", NS, "app-sluice")
            .expect("the operator wrote the proxy's ConfigMap");
        let mut c = sluice_proxy::Config::from_yaml(cm["data"]["routes.yaml"].as_str().unwrap())
            .expect("the operator's proxy config parses strictly");
        let listen = |text: &str| {
            let port: u16 = text.strip_prefix("0.0.0.0:").unwrap().parse().unwrap();
            format!("127.0.0.1:{}", self.proxy_ports[&port])
        };
        let upstream = |text: &str| {
            let (host, port) = text.rsplit_once(':').unwrap();
            self.resolve(host, port.parse().unwrap()).to_string()
        };
        c.listen = listen(&c.listen);
        c.admin.listen = listen(&c.admin.listen);
        c.admin.token_file = None;
        for l in &mut c.listeners {
            l.listen = listen(&l.listen);
        }
        for t in &mut c.tcp_listeners {
            t.listen = listen(&t.listen);
            t.upstream = upstream(&t.upstream);
        }
        for r in &mut c.routes {
            r.stable = format!(
                "http://{}",
                upstream(r.stable.trim_start_matches("http://"))
            );
            if let Some(canary) = &mut r.canary {
                *canary = format!("http://{}", upstream(canary.trim_start_matches("http://")));
            }
        }
        c
    }

    /// The proxy pods follow their ConfigMap (and the pods behind the
    /// Services, as kube-proxy would).
    async fn sync_proxy(&mut self) {
        // Once the operator deletes what it made, the proxy pods are gone
        // with it (and no Service sends them anything).
        if ["app-sluice", "app-primary"]
            .iter()
            .any(|d| self.fake.get(APPS, "deployments", NS, d).is_none())
            || self
                .fake
                .get("api/v1", "configmaps", NS, "app-sluice")
                .is_none()
        {
            return;
        }
        let config = self.proxy_config();
        let text = self
            .fake
            .get("api/v1", "configmaps", NS, "app-sluice")
            .unwrap()["data"]["routes.yaml"]
            .as_str()
            .unwrap()
            .to_string();
        let layout = self
            .fake
            .get(APPS, "deployments", NS, "app-sluice")
            .unwrap()["spec"]["template"]["metadata"]["annotations"]["sluice.dev/listener-layout"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if self.proxy.is_some() && layout != self.proxy_layout {
            if self.rolling {
                // The Deployment controller replaces the pod: the new one
                // reads the ConfigMap as it is now.
                self.proxy.take().unwrap().shutdown().await;
                self.rolling = false;
            } else {
                // The rollout takes a moment; the old pod meanwhile sees
                // the ConfigMap change like any other.
                self.rolling = true;
            }
        }
        match &self.proxy {
            Some(p) => {
                if p.store.load().config == config {
                    p.store.metrics().set_config_digest(&digest(&text));
                    return;
                }
                match p.store.replace(config) {
                    Ok(_) => p.store.metrics().set_config_digest(&digest(&text)),
                    // A refused reload: the proxy keeps the config it had
                    // (the operator must see that in its metrics).
                    Err(e) => assert!(
                        self.rolling,
                        "the proxy refused an update while no rollout was due: {e}"
                    ),
                }
            }
            None => {
                let p = sluice_proxy::start(config, sluice_proxy::StartOptions::default())
                    .await
                    .expect("the proxy starts on the operator's config");
                p.store.metrics().set_config_digest(&digest(&text));
                self.proxy = Some(p);
                self.proxy_layout = layout;
            }
        }
    }

    /// kube-proxy: where a connection to Service `app`'s port goes now.
    fn through_service(&self, port_name: &str) -> SocketAddr {
        let svc = self.fake.get("api/v1", "services", NS, "app").unwrap();
        let port = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == port_name)
            .unwrap_or_else(|| panic!("Service app lost its port {port_name}: {svc}"));
        let target = port["targetPort"].as_u64().expect("a numeric targetPort") as u16;
        if svc["spec"]["selector"]["app.kubernetes.io/name"] == "sluice-proxy" {
            format!("127.0.0.1:{}", self.proxy_ports[&target])
                .parse()
                .unwrap()
        } else {
            assert_eq!(svc["spec"]["selector"], json!({"app": "app"}));
            let pods = &self.pods[self.image_of("app").as_str()];
            match target {
                9898 => pods.http.addr,
                6379 => pods.echo,
                other => panic!("no container port {other}"),
            }
        }
    }

    /// Both ports work: HTTP answers 200 (the backend's name is returned)
    /// and the TCP port echoes bytes that are not HTTP.
    async fn both_ports_work(&self, phase: &str) -> String {
        let http = self.through_service("http");
        let (status, headers, _) = get(&format!("http://{http}/"))
            .await
            .unwrap_or_else(|e| panic!("{phase}: HTTP through Service app failed: {e}"));
        assert_eq!(status, 200, "{phase}: HTTP");
        let tcp = self.through_service("redis");
        let mut s = tokio::net::TcpStream::connect(tcp)
            .await
            .unwrap_or_else(|e| panic!("{phase}: TCP connect to {tcp}: {e}"));
        let message = format!("*1\r\n$4\r\nPING\r\n\x00\x01 {phase}");
        s.write_all(message.as_bytes()).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap_or_else(|_| panic!("{phase}: no echo within 5 s"))
            .unwrap_or_else(|e| panic!("{phase}: TCP echo: {e}"));
        assert_eq!(back, message.as_bytes(), "{phase}: bytes echoed");
        headers["x-backend"].to_str().unwrap().to_string()
    }

    /// Ticks (playing kubelet, the proxy pods and the clock) until `done`.
    async fn drive(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..60 {
            if done(self) {
                return;
            }
            for d in ["app", "app-primary", "app-sluice"] {
                self.fake.make_ready(NS, d);
            }
            self.clock.fetch_add(10, Ordering::SeqCst);
            self.tick().await;
            self.sync_proxy().await;
        }
        panic!("never reached: {what}; status {:?}", self.status());
    }
}

#[tokio::test]
async fn an_http_port_and_a_raw_tcp_port_both_work_through_takeover_release_and_removal() {
    let mut c = Cluster::new().await;
    assert_eq!(c.both_ports_work("before").await, "v1");

    c.drive("take-over", |c| {
        c.status().is_some_and(|s| s.phase == "Initialized")
    })
    .await;
    let config = c.proxy_config();
    let cm = c
        .fake
        .get("api/v1", "configmaps", NS, "app-sluice")
        .unwrap();
    let written =
        sluice_proxy::Config::from_yaml(cm["data"]["routes.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(written.tcp_listeners.len(), 1, "{written:?}");
    assert_eq!(written.tcp_listeners[0].listen, "0.0.0.0:6379");
    assert_eq!(
        written.tcp_listeners[0].upstream, "app-primary.shop.svc:6379",
        "the TCP port goes to the stable pods"
    );
    assert_eq!(written.routes.len(), 1, "one HTTP route: {written:?}");
    assert!(written.listeners.is_empty());
    assert_eq!(config.routes[0].name, "app");
    let proxy = c.fake.get(APPS, "deployments", NS, "app-sluice").unwrap();
    let ports = proxy["spec"]["template"]["spec"]["containers"][0]["ports"].clone();
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["containerPort"] == 6379),
        "the proxy pod declares the TCP port: {ports}"
    );
    let svc = c.fake.get("api/v1", "services", NS, "app").unwrap();
    assert_eq!(
        svc["spec"]["selector"]["app.kubernetes.io/name"],
        "sluice-proxy"
    );
    assert_eq!(c.both_ports_work("taken over").await, "v1");

    // A release: v2 gets HTTP traffic by weight; the TCP port stays on v1.
    c.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2", "ports": [
            {"name": "http", "containerPort": 9898}, {"name": "redis", "containerPort": 6379}]}]}}}}),
    );
    c.drive("a canary step", |c| {
        c.status()
            .is_some_and(|s| s.phase == "Progressing" && s.canary_weight >= 20.0)
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(c.both_ports_work("progressing").await);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["v1", "v2"],
        "HTTP is split while the TCP port echoes"
    );
    let m = scrape(c.proxy.as_ref().unwrap().admin_addr).await;
    assert!(
        m.sum("sluice_tcp_connections_total", &[("outcome", "closed")]) >= 1.0,
        "the proxy forwarded the TCP connections"
    );

    c.drive("promotion", |c| {
        c.status().is_some_and(|s| s.phase == "Succeeded")
    })
    .await;
    assert_eq!(c.image_of("app-primary"), "app:2");
    assert_eq!(c.both_ports_work("promoted").await, "v2");

    // Removal: the Service goes back to the app's own pods, both ports.
    c.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/canary": null}}}),
    );
    for i in 0..6 {
        c.fake.make_ready(NS, "app");
        c.tick().await;
        c.sync_proxy().await;
        // Every moment of the way back, both ports work.
        c.both_ports_work(&format!("removal, tick {i}")).await;
    }
    let svc = c.fake.get("api/v1", "services", NS, "app").unwrap();
    assert_eq!(svc["spec"]["selector"], json!({"app": "app"}));
    assert_eq!(svc["spec"]["ports"][1]["port"], 6379);
    assert_eq!(c.both_ports_work("removed").await, "v2");
}

/// `kubectl -n shop ARGS...` against the fake, as a person types it.
fn kubectl(fake: &FakeKube, args: &[&str]) {
    let dir = TempDir::new("kube-ports");
    let kubeconfig = dir.path.join("kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let out = std::process::Command::new(sluice_tests::kubectl())
        .env("KUBECONFIG", &kubeconfig)
        .args(["-n", NS])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Making a TCP port HTTP mid-release moves it from `tcp_listeners` to
/// `listeners`, which a running proxy refuses to reload: the operator
/// writes the new layout to the ConfigMap, rolls the proxy pods (their
/// template carries the layout's digest), says so with a Warning Event
/// while an old pod refuses it, and later weights reach the new pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_which_ports_are_http_rolls_the_proxy_pods_and_later_weights_reach_them() {
    let mut c = Cluster::with_probe(true).await;
    c.drive("take-over", |c| {
        c.status().is_some_and(|s| s.phase == "Initialized")
    })
    .await;
    assert_eq!(c.both_ports_work("taken over").await, "v1");
    let layout = |c: &Cluster| {
        c.fake.get(APPS, "deployments", NS, "app-sluice").unwrap()["spec"]["template"]["metadata"]
            ["annotations"]["sluice.dev/listener-layout"]
            .as_str()
            .expect("the proxy's pod template carries its listener layout")
            .to_string()
    };
    let before = layout(&c);
    c.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2", "ports": [
            {"name": "http", "containerPort": 9898}, {"name": "redis", "containerPort": 6379}]}]}}}}),
    );
    c.drive("a canary step", |c| {
        c.status()
            .is_some_and(|s| s.phase == "Progressing" && s.canary_weight >= 20.0)
    })
    .await;
    assert!(
        c.proxy
            .as_ref()
            .unwrap()
            .store
            .load()
            .config
            .listeners
            .is_empty()
    );

    kubectl(
        &c.fake,
        &[
            "annotate",
            "deploy",
            "app",
            "sluice.dev/http-ports=http,redis",
        ],
    );
    c.drive("the next weight served by the proxy", |c| {
        c.proxy
            .as_ref()
            .is_some_and(|p| p.store.load().config.routes[0].canary_weight >= 50.0)
    })
    .await;
    assert_ne!(layout(&c), before, "the proxy pods were rolled");
    let served = c.proxy.as_ref().unwrap().store.load().config.clone();
    assert_eq!(served.listeners.len(), 1, "{served:?}");
    assert!(served.tcp_listeners.is_empty(), "{served:?}");
    let refused: Vec<String> = c
        .fake
        .names("apis/events.k8s.io/v1", "events", NS)
        .into_iter()
        .filter_map(|n| c.fake.get("apis/events.k8s.io/v1", "events", NS, &n))
        .filter(|e| e["reason"] == "ProxyConfigRefused")
        .map(|e| e["note"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        refused
            .iter()
            .any(|n| n.contains("app-sluice-a") && n.contains("refused config")),
        "a Warning Event names the replica that refused the new layout: {refused:?}"
    );
    // The new pod serves the weight the release is at.
    let status = c.status().unwrap();
    assert_eq!(
        served.routes[0].canary_weight, status.canary_weight,
        "{status:?}"
    );
}

/// A port added to the user's Service after the take-over is served by the
/// proxy and reaches the primary: Service `app-primary` gets the port too
/// (it once kept the ports it was made with, so the proxy sent the new
/// port's connections to a port the primary's Service did not have).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_added_after_the_takeover_reaches_the_primary() {
    // TLS to the fake: a person's kubectl takes part.
    let mut c = Cluster::with_probe(true).await;
    c.drive("take-over", |c| {
        c.status().is_some_and(|s| s.phase == "Initialized")
    })
    .await;
    let ports_of = |c: &Cluster, name: &str| -> Vec<i64> {
        let svc = c.fake.get("api/v1", "services", NS, name).unwrap();
        let mut ports: Vec<i64> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["port"].as_i64())
            .collect();
        ports.sort();
        ports
    };
    let before = ports_of(&c, "app-primary");
    assert!(!before.contains(&9090), "{before:?}");
    kubectl(
        &c.fake,
        &[
            "patch",
            "svc",
            "app",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/spec/ports/-","value":{"name":"metrics","port":9090,"targetPort":9090}}]"#,
        ],
    );
    // Reconciles only: this harness's proxy pods serve the ports picked
    // at its start, which the new one is not.
    for _ in 0..3 {
        c.clock.fetch_add(10, Ordering::SeqCst);
        c.tick().await;
    }
    assert_eq!(ports_of(&c, "app-primary"), ports_of(&c, "app"));
    let cm = c
        .fake
        .get("api/v1", "configmaps", NS, "app-sluice")
        .unwrap();
    let written =
        sluice_proxy::Config::from_yaml(cm["data"]["routes.yaml"].as_str().unwrap()).unwrap();
    assert!(
        written
            .tcp_listeners
            .iter()
            .any(|l| l.upstream == "app-primary.shop.svc:9090"),
        "{written:?}"
    );
}

/// The proxy's ports above are picked at the start and bound only after
/// the take-over, seconds later; another test process picking meanwhile
/// must not be handed the same port. Two processes scanning from the same
/// start (this test, and this binary run again as a child for this test
/// alone) get different ports.
#[test]
fn two_test_processes_are_never_handed_the_same_port() {
    const CHILD: &str = "SLUICE_TEST_FREE_PORT_FROM";
    if let Ok(start) = std::env::var(CHILD) {
        println!("picked {}", free_port_from(start.parse().unwrap()));
        return;
    }
    let start = std::process::id();
    let mine = free_port_from(start);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "two_test_processes_are_never_handed_the_same_port",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, start.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let theirs: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("picked "))
        .unwrap_or_else(|| panic!("the child picked no port: {text}"))
        .parse()
        .unwrap();
    assert_ne!(theirs, mine, "both processes were handed port {mine}");
}
