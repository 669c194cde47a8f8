//! State shared by replicas through a real Redis (issue 13): each store's Redis implementation,
//! seen from two "replicas" (two independent stores on one Redis), and what happens when Redis
//! stops, hangs and comes back.
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use llmux::config::load::parse_file;
use llmux::routing::table::RoutingTable;
use llmux::shared::connection::RedisState;
use llmux::shared::leases::LeaseVerdict;
use llmux::shared::limits::{Limit, Verdict, Window};
use llmux::shared::owners::IdFamily;
use llmux::shared::{SharedSettings, SharedState};
use serde_json::json;

use llmux::cli::ServeArgs;
use llmux::startup::Application;

use crate::helpers::provider_file;
use crate::redis_server::RedisServer;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\nshared-image";
/// The deadline of the tests that stop or hang Redis: the default.
const DEADLINE: Duration = Duration::from_millis(50);
/// The deadline of the tests that need every call to reach Redis: generous, so that a busy
/// machine does not turn a slow answer into a fallback.
const PATIENT: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded CI machine, on top of the Redis deadline.
const SLACK: Duration = Duration::from_millis(150);

fn settings() -> SharedSettings {
    let mut settings = SharedSettings::new(1024 * 1024, Duration::from_secs(60));
    settings.redis_timeout = PATIENT;
    settings
}

fn impatient() -> SharedSettings {
    let mut settings = settings();
    settings.redis_timeout = DEADLINE;
    settings
}

fn replica(redis: &RedisServer, settings: SharedSettings) -> SharedState {
    SharedState::on_redis(&redis.url(), settings).expect("a valid Redis URL")
}

/// A replica's routing table: model `m` on `v1/responses` at `base_url`.
fn table(base_url: &str) -> RoutingTable {
    let text = provider_file("mock", "", &[("m", "target-m")])
        .to_string()
        .replace("{UPSTREAM}", base_url);
    let load = parse_file(Path::new("provider.json"), &text, &|_| None);
    let table = RoutingTable::new();
    table.replace_file(
        Path::new("provider.json"),
        load.endpoints.expect("the provider file loads"),
    );
    table
}

fn rate(key: &str, limit: u64) -> Limit {
    Limit::Rate {
        key: key.into(),
        limit,
        period: Duration::from_secs(60),
        cost: 1,
    }
}

fn quota(key: &str, limit: u64, cost: u64) -> Limit {
    Limit::Quota {
        key: key.into(),
        window: Window::Day,
        limit,
        cost,
    }
}

/// Runs `call` and asserts it returned within the Redis deadline (plus scheduling slack).
async fn within_deadline<T>(what: &str, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let value = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"));
    let took = started.elapsed();
    assert!(took <= DEADLINE + SLACK, "{what} took {took:?}");
    value
}

/// Polls `check` until it holds, for at most `deadline`.
async fn eventually(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < deadline,
            "{what} not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_id_remembered_by_one_replica_is_found_by_another_until_it_is_forgotten() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        replica(&redis, settings()),
        replica(&redis, settings()),
        replica(&redis, settings()),
    );
    let (table_a, table_b) = (table("http://127.0.0.1:9"), table("http://127.0.0.1:9"));
    let creator = table_a
        .lookup("m")
        .unwrap()
        .pool("v1/responses")
        .unwrap()
        .pick()
        .clone();

    a.owners
        .remember(IdFamily::Responses, "resp_1", &creator)
        .await;

    let found = b
        .owners
        .owner(IdFamily::Responses, "resp_1", &table_b)
        .await;
    let found = found.expect("replica b finds the id replica a made");
    assert!(
        !Arc::ptr_eq(&found, &creator),
        "b resolves the owner in its own table"
    );
    assert_eq!(found.upstream_uri, creator.upstream_uri);
    assert!(b
        .owners
        .owner(IdFamily::Responses, "resp_other", &table_b)
        .await
        .is_none());
    // A replica whose config has no such endpoint does not send the call anywhere else.
    let elsewhere = table("http://127.0.0.1:10");
    assert!(b
        .owners
        .owner(IdFamily::Responses, "resp_1", &elsewhere)
        .await
        .is_none());
    // Odd ids never reach Redis.
    a.owners
        .remember(IdFamily::Responses, "../x", &creator)
        .await;
    assert!(b
        .owners
        .owner(IdFamily::Responses, "../x", &table_b)
        .await
        .is_none());

    b.owners.forget(IdFamily::Responses, "resp_1").await;
    assert!(c
        .owners
        .owner(IdFamily::Responses, "resp_1", &table_b)
        .await
        .is_none());
}

#[tokio::test]
async fn an_image_stored_by_one_replica_is_served_by_another_bounded_in_bytes_and_time() {
    let redis = RedisServer::start();
    let mut small = settings();
    small.image_cache_bytes = 3 * PNG.len() as u64;
    small.image_cache_ttl = Duration::from_millis(600);
    let (a, b) = (replica(&redis, small), replica(&redis, small));

    let first = a
        .images
        .insert_new("m", Bytes::from_static(PNG))
        .await
        .unwrap();
    let image = b.images.get("m", &first).await.expect("b serves a's image");
    assert_eq!(image.bytes, PNG);
    assert_eq!(image.content_type, "image/png");
    assert!(image.max_age <= Duration::from_millis(600) && !image.max_age.is_zero());
    assert_eq!(
        a.images.get("m", &first).await.unwrap().etag,
        image.etag,
        "one ETag on every replica"
    );
    assert!(b.images.get("other-model", &first).await.is_none());

    // Three more fill the store: the oldest goes.
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(
            b.images
                .insert_new("m", Bytes::from_static(PNG))
                .await
                .unwrap(),
        );
    }
    assert!(
        a.images.get("m", &first).await.is_none(),
        "the oldest image was evicted"
    );
    for id in &later {
        assert!(a.images.get("m", id).await.is_some());
    }
    let too_big = Bytes::from(vec![0u8; 3 * PNG.len() + 1]);
    assert!(a.images.insert_new("m", too_big).await.is_none());

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(a.images.get("m", &later[2]).await.is_none(), "expired");
}

#[tokio::test]
async fn a_60_per_minute_rate_admits_60_across_replicas_and_limits_are_all_or_none() {
    let redis = RedisServer::start();
    let replicas = [
        replica(&redis, settings()),
        replica(&redis, settings()),
        replica(&redis, settings()),
    ];
    let limits = [rate("key-1", 60)];
    let mut admitted = 0;
    for round in 0..100 {
        match replicas[round % 3].limits.admit(&limits).await {
            Verdict::Admitted { .. } => admitted += 1,
            Verdict::Limited {
                index: 0,
                retry_after,
            } => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((60..=61).contains(&admitted), "admitted {admitted} of 100");

    // A daily token budget of 100: a reservation of 80, settled to 20 used.
    let budget = |cost| [rate("key-2", 1000), quota("key-2", 100, cost)];
    let at = match replicas[0].limits.admit(&budget(80)).await {
        Verdict::Admitted { at } => at,
        other => panic!("unexpected {other:?}"),
    };
    assert!(matches!(
        replicas[1].limits.admit(&budget(30)).await,
        Verdict::Limited { index: 1, .. }
    ));
    replicas[2]
        .limits
        .settle("key-2", Window::Day, at, -60)
        .await;
    assert!(matches!(
        replicas[1].limits.admit(&budget(80)).await,
        Verdict::Admitted { .. }
    ));
    assert!(matches!(
        replicas[0].limits.admit(&budget(1)).await,
        Verdict::Limited { index: 1, .. }
    ));
    // The refused admissions counted nothing against the rate: 2 of 1000 are used.
    let rate_only = [Limit::Rate {
        key: "key-2".into(),
        limit: 1000,
        period: Duration::from_secs(60),
        cost: 998,
    }];
    assert!(matches!(
        replicas[0].limits.admit(&rate_only).await,
        Verdict::Admitted { .. }
    ));
}

#[tokio::test]
async fn concurrency_leases_are_shared_and_expire_when_their_replica_dies() {
    let redis = RedisServer::start();
    let mut short = settings();
    short.lease_ttl = Duration::from_millis(600);
    let (a, b) = (replica(&redis, short), replica(&redis, short));

    let first = match a.leases.acquire("key-3", 2).await {
        LeaseVerdict::Held(lease) => lease,
        other => panic!("unexpected {other:?}"),
    };
    let second = match b.leases.acquire("key-3", 2).await {
        LeaseVerdict::Held(lease) => lease,
        other => panic!("unexpected {other:?}"),
    };
    assert!(matches!(
        a.leases.acquire("key-3", 2).await,
        LeaseVerdict::Full
    ));
    // A held lease is renewed: still held well past its TTL.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(matches!(
        b.leases.acquire("key-3", 2).await,
        LeaseVerdict::Full
    ));

    drop(first);
    let mut third = None;
    eventually(
        "a released slot is free",
        Duration::from_secs(3),
        async || {
            third = match b.leases.acquire("key-3", 2).await {
                LeaseVerdict::Held(lease) => Some(lease),
                _ => None,
            };
            third.is_some()
        },
    )
    .await;

    // A replica that dies mid-request: its runtime stops, nothing releases or renews.
    drop(second);
    let url = redis.url();
    // On its own thread, so this test's runtime keeps renewing the leases it holds meanwhile.
    let taken = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dying = SharedState::on_redis(&url, short).unwrap();
            eventually(
                "the dying replica takes the slot b gave back",
                Duration::from_secs(3),
                async || match dying.leases.acquire("key-3", 2).await {
                    LeaseVerdict::Held(lease) => {
                        std::mem::forget(lease);
                        true
                    }
                    _ => false,
                },
            )
            .await;
        });
        Instant::now()
    })
    .await
    .unwrap();
    assert!(matches!(
        a.leases.acquire("key-3", 2).await,
        LeaseVerdict::Full
    ));
    eventually(
        "the dead replica's lease expires",
        Duration::from_secs(3),
        async || matches!(a.leases.acquire("key-3", 2).await, LeaseVerdict::Held(_)),
    )
    .await;
    let lived = taken.elapsed();
    assert!(
        lived >= Duration::from_millis(500),
        "expired after {lived:?}, before its TTL"
    );
    drop(third);
}

#[tokio::test]
async fn with_redis_stopped_calls_return_within_the_deadline_then_sharing_resumes_when_it_is_back()
{
    let mut redis = RedisServer::start();
    let mut closed = impatient();
    closed.fail_closed = true;
    let (a, b, strict) = (
        replica(&redis, impatient()),
        replica(&redis, impatient()),
        replica(&redis, closed),
    );
    let table = table("http://127.0.0.1:9");
    let creator = table
        .lookup("m")
        .unwrap()
        .pool("v1/responses")
        .unwrap()
        .pick()
        .clone();
    assert!(matches!(
        a.limits.admit(&[rate("key-4", 100)]).await,
        Verdict::Admitted { .. }
    ));

    redis.stop();
    for round in 0..20 {
        let verdict = within_deadline("admit", a.limits.admit(&[rate("key-4", 100)])).await;
        assert_eq!(
            verdict,
            Verdict::Unchecked { admitted: true },
            "round {round}"
        );
        let verdict = within_deadline("admit", strict.limits.admit(&[rate("key-4", 100)])).await;
        assert_eq!(
            verdict,
            Verdict::Unchecked { admitted: false },
            "round {round}"
        );
        let id = format!("resp_down_{round}");
        within_deadline(
            "remember",
            a.owners.remember(IdFamily::Responses, &id, &creator),
        )
        .await;
        let own = within_deadline("owner", a.owners.owner(IdFamily::Responses, &id, &table)).await;
        assert!(
            own.is_some(),
            "a replica keeps the ids it made while Redis is down"
        );
        let other =
            within_deadline("owner", b.owners.owner(IdFamily::Responses, &id, &table)).await;
        assert!(other.is_none());
        let image =
            within_deadline("insert", a.images.insert_new("m", Bytes::from_static(PNG))).await;
        let image = image.expect("kept by this replica");
        assert!(within_deadline("get", a.images.get("m", &image))
            .await
            .is_some());
        assert!(matches!(
            within_deadline("acquire", a.leases.acquire("key-4", 1)).await,
            LeaseVerdict::Unchecked { admitted: true }
        ));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(a.redis.as_ref().unwrap().health().state(), RedisState::Down);

    redis.restart();
    eventually("sharing resumes", Duration::from_secs(5), async || {
        a.owners
            .remember(IdFamily::Responses, "resp_back", &creator)
            .await;
        b.owners
            .owner(IdFamily::Responses, "resp_back", &table)
            .await
            .is_some()
    })
    .await;
    eventually(
        "limits are checked again",
        Duration::from_secs(5),
        async || {
            matches!(
                strict.limits.admit(&[rate("key-4", 100)]).await,
                Verdict::Admitted { .. }
            )
        },
    )
    .await;
    assert_eq!(a.redis.as_ref().unwrap().health().state(), RedisState::Up);
}

#[tokio::test]
async fn a_hung_redis_costs_a_request_at_most_the_deadline_then_nothing_while_backing_off() {
    let redis = RedisServer::start();
    let a = replica(&redis, impatient());
    assert!(matches!(
        a.limits.admit(&[rate("key-5", 100)]).await,
        Verdict::Admitted { .. }
    ));

    redis.freeze();
    let started = Instant::now();
    let mut verdicts = Vec::new();
    for _ in 0..50 {
        verdicts.push(within_deadline("admit", a.limits.admit(&[rate("key-5", 100)])).await);
    }
    assert!(verdicts
        .iter()
        .all(|v| *v == Verdict::Unchecked { admitted: true }));
    // 50 calls back to back: only the first three (then one probe per back-off) wait for the deadline.
    assert!(
        started.elapsed() < DEADLINE * 10,
        "took {:?}",
        started.elapsed()
    );

    redis.thaw();
    eventually(
        "limits are checked again",
        Duration::from_secs(5),
        async || {
            matches!(
                a.limits.admit(&[rate("key-5", 100)]).await,
                Verdict::Admitted { .. }
            )
        },
    )
    .await;
}

#[tokio::test]
async fn health_reports_redis_while_ready_stays_ready_and_metrics_count_failures() {
    let mut redis = RedisServer::start();
    let config_dir = tempfile::tempdir().unwrap();
    let provider = provider_file("mock", "", &[("m", "target-m")]).to_string();
    std::fs::write(
        config_dir.path().join("provider.json"),
        provider.replace("{UPSTREAM}", "http://127.0.0.1:9"),
    )
    .unwrap();
    let mut args = ServeArgs::new(config_dir.path());
    args.workers = Some(1);
    args.redis_url = Some(redis.url());
    args.redis_timeout = DEADLINE;
    let application = Application::build_with_env(args, Arc::new(|_: &str| None)).unwrap();
    let (address, shared) = (
        format!("http://127.0.0.1:{}", application.port()),
        application.shared(),
    );
    tokio::spawn(application.run_until_stopped());
    let http = reqwest::Client::new();
    let health = async || -> serde_json::Value {
        let response = http.get(format!("{address}/health")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    };
    assert_eq!(health().await, json!({"status": "ok", "redis": "up"}));

    redis.stop();
    within_deadline("admit", shared.limits.admit(&[rate("key-6", 1)])).await;
    assert_eq!(health().await, json!({"status": "ok", "redis": "down"}));
    let ready = http.get(format!("{address}/ready")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "Redis is no reason to take traffic away"
    );
    let metrics = http.get(format!("{address}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("llmux_redis_up 0"), "{metrics}");
    assert!(
        metrics.contains(r#"llmux_limits_unchecked_total{decision="open"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("llmux_redis_errors_total{"), "{metrics}");

    redis.restart();
    eventually("redis is up again", Duration::from_secs(5), async || {
        let _ = shared.limits.admit(&[rate("key-6", 1)]).await;
        health().await["redis"] == "up"
    })
    .await;
}

fn yaml_documents(path: &str) -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| serde_yaml_ng::Value::deserialize(document).unwrap())
        .collect()
}

/// The host of a `redis://host:port/db` URL.
fn redis_host(url: &str) -> &str {
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    rest.split([':', '/']).next().unwrap()
}

#[test]
fn the_kubernetes_manifests_run_redis_beside_llmux_when_they_run_several_replicas() {
    let llmux = yaml_documents("deploy/kubernetes/deployment.yaml").remove(0);
    let objects = yaml_documents("deploy/kubernetes/shared-redis.yaml");
    assert!(llmux["spec"]["replicas"].as_u64().unwrap() > 1);
    let env = llmux["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap();
    let url = env
        .iter()
        .find(|v| v["name"].as_str() == Some("LLMUX_REDIS_URL"))
        .and_then(|v| v["value"].as_str())
        .expect("several replicas are configured with LLMUX_REDIS_URL");
    let service = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == redis_host(url))
        .expect("the URL names a Service of shared-redis.yaml");
    let redis = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Redis Deployment");
    assert_eq!(
        service["spec"]["selector"],
        redis["spec"]["selector"]["matchLabels"]
    );
    assert_ne!(
        service["spec"]["selector"], llmux["spec"]["selector"]["matchLabels"],
        "the Redis Service must not select llmux pods"
    );
}

#[test]
fn the_replicas_compose_file_runs_redis_and_a_load_balancer_beside_llmux() {
    let compose = yaml_documents("deploy/docker-compose.replicas.yml").remove(0);
    let services = &compose["services"];
    let llmux = &services["llmux"];
    assert!(llmux["deploy"]["replicas"].as_u64().unwrap() > 1);
    let url = llmux["environment"]["LLMUX_REDIS_URL"].as_str().unwrap();
    assert!(services[redis_host(url)]["image"]
        .as_str()
        .unwrap()
        .starts_with("redis"));
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/llmux.conf"),
    )
    .unwrap();
    assert!(conf.contains("server llmux:8000;"), "{conf}");
    // The single-instance file stays as it was: one replica, no Redis needed.
    let single = yaml_documents("deploy/docker-compose.yml").remove(0);
    assert!(single["services"]["llmux"]["deploy"]["replicas"].is_null());
}

#[tokio::test]
async fn a_redis_url_that_is_not_one_stops_start_up_naming_the_flag() {
    let config_dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_llmux"))
        .arg("--config-dir")
        .arg(config_dir.path())
        .args(["--port", "0", "--redis-url", "http://user:secret@example/0"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("llmux exits")
        .unwrap();
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("--redis-url"), "{text}");
    assert!(
        !text.contains("secret"),
        "the URL's password leaked: {text}"
    );
}
