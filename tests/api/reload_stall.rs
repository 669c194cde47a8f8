//! Reloading a 30,000-model file while requests run (issue 20): no request waits for the
//! reload, `/metrics` and `/admin/config` included.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{provider_file, Spawn};

fn big_file(models: usize, target: &str) -> String {
    let models: serde_json::Map<String, serde_json::Value> = (0..models)
        .map(|i| {
            (
                format!("big-{i}"),
                json!({"endpoints": [{"path": "v1/chat/completions", "target_model_name": target}]}),
            )
        })
        .collect();
    json!({"big": {"target_base_url": "http://127.0.0.1:9", "health_path": null, "models": models}})
        .to_string()
}

/// A client that drops idle connections before llmux's 5 s keep-alive does, so a slow request
/// on one connection never makes another one's reuse race the server's close.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// The slowest of `count` sequential chat requests, each bounded by a 10 s deadline.
async fn worst_latency(app: &crate::helpers::TestApp, count: usize) -> Duration {
    let http = client();
    let mut worst = Duration::ZERO;
    for _ in 0..count {
        let started = Instant::now();
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            http.post(app.url("/v1/chat/completions"))
                .json(&json!({"model": "m", "messages": []}))
                .send(),
        )
        .await
        .expect("answered within 10 s")
        .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        worst = worst.max(started.elapsed());
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30000_model_reload_never_stalls_requests_metrics_or_admin_config() {
    let app = Spawn::new()
        .admin_token_v1_open()
        .file("a.json", provider_file("mock", "", &[("m", "t")]))
        .file("big.json", big_file(30_000, "v1"))
        .start()
        .await;
    // Scrapes and admin reads run all along (two a second each), as in the report that found
    // the stall.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = ["/metrics", "/admin/config"]
        .into_iter()
        .map(|path| {
            let (http, url, stop) = (client(), app.url(path), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let response = tokio::time::timeout(
                        Duration::from_secs(30),
                        http.get(&url)
                            .bearer_auth(crate::helpers::ADMIN_TOKEN)
                            .send(),
                    )
                    .await
                    .expect("answered within 30 s")
                    .unwrap();
                    assert_eq!(response.status(), 200);
                    response.bytes().await.unwrap();
                    worst = worst.max(started.elapsed());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                worst
            })
        })
        .collect();
    let baseline = worst_latency(&app, 200).await;

    let generation = app
        .http
        .get(app.url("/admin/config"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["generation"]
        .as_u64()
        .unwrap();
    std::fs::write(
        app.config_dir.path().join("big.json"),
        big_file(30_000, "v2"),
    )
    .unwrap();
    let started = Instant::now();
    let mut during = Duration::ZERO;
    loop {
        during = during.max(worst_latency(&app, 5).await);
        let now = app
            .http
            .get(app.url("/admin/config"))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()["generation"]
            .as_u64()
            .unwrap();
        if now != generation {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no reload within 120 s"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }

    eprintln!("worst chat latency: {baseline:?} before the reload, {during:?} during it (reload took about {:?})", started.elapsed());
    // The stall this guards against held requests for the whole reload (seconds); scheduling
    // noise on a shared debug-build CI machine is far less.
    assert!(
        during < baseline + Duration::from_millis(750),
        "worst {during:?} during the reload vs {baseline:?} before"
    );
}
