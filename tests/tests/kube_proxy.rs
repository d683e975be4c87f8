//! The proxy's ConfigMap source against the fake API server, through a real
//! `kube::Client`.

use std::time::Duration;

use serde_json::json;
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::*;

fn routes(stable: &str, canary: &str, weight: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nroutes:\n  - name: app\n    stable: {stable}\n    canary: {canary}\n    canary_weight: {weight}\n"
    )
}

/// Writes a new `routes.yaml` (or removes the key, with `None`).
fn write_config(fake: &FakeKube, text: Option<String>) {
    fake.merge_into(
        "api/v1",
        "configmaps",
        "shop",
        "app-sluice",
        json!({"data": {"routes.yaml": text, "other": "x"}}),
    );
}

async fn wait_for_weight(proxy: &ProxyHandle, weight: f64) {
    eventually(
        "the new weight to apply",
        Duration::from_secs(10),
        || async { (route_weight(proxy).await == Some(weight)).then_some(()) },
    )
    .await;
}

async fn wait_for_failures(proxy: &ProxyHandle, failures: f64) {
    eventually(
        "the rejected version to be counted",
        Duration::from_secs(10),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum("sluice_config_reloads_total", &[("result", "failure")]) == failures)
                .then_some(())
        },
    )
    .await;
}

async fn route_weight(proxy: &ProxyHandle) -> Option<f64> {
    let (_, _, body) = get(&format!("http://{}/routes/app", proxy.admin_addr))
        .await
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&body).ok()?["canary_weight"].as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_its_configmap_and_keeps_the_last_good_table() {
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    fake.put(
        "api/v1",
        "configmaps",
        "shop",
        json!({"metadata": {"name": "app-sluice"}, "data": {"routes.yaml": routes(&stable.url(), &canary.url(), "0")}}),
    );
    let (_, config) = sluice_proxy::kube_source::fetch(fake.client(), "shop", "app-sluice")
        .await
        .unwrap();
    let proxy = sluice_proxy::start(config, sluice_proxy::StartOptions::default())
        .await
        .unwrap();
    let _follow = sluice_proxy::kube_source::follow(
        fake.client(),
        "shop".into(),
        "app-sluice".into(),
        proxy.store.clone(),
    );

    let config_with = |weight: &str| Some(routes(&stable.url(), &canary.url(), weight));
    write_config(&fake, config_with("100"));
    wait_for_weight(&proxy, 100.0).await;
    let (_, h, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
    assert_eq!(h["x-backend"], "canary");

    // An invalid version, then a missing key: rejected and counted; the last good table serves.
    write_config(&fake, config_with("150"));
    wait_for_failures(&proxy, 1.0).await;
    write_config(&fake, None);
    wait_for_failures(&proxy, 2.0).await;
    assert_eq!(route_weight(&proxy).await, Some(100.0));
    let (_, h, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
    assert_eq!(h["x-backend"], "canary");

    // Back to a valid version.
    write_config(&fake, config_with("0"));
    wait_for_weight(&proxy, 0.0).await;
}

#[tokio::test]
async fn a_missing_configmap_is_a_clear_start_error() {
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    let err = sluice_proxy::kube_source::fetch(fake.client(), "shop", "nope")
        .await
        .unwrap_err();
    assert!(err.contains("cannot read ConfigMap shop/nope"), "{err}");
    fake.put(
        "api/v1",
        "configmaps",
        "shop",
        json!({"metadata": {"name": "empty"}, "data": {}}),
    );
    let err = sluice_proxy::kube_source::fetch(fake.client(), "shop", "empty")
        .await
        .unwrap_err();
    assert!(err.contains("has no `routes.yaml` key"), "{err}");
}
