//! State shared by replicas through a real Redis (issue 13): each store's Redis implementation,
//! seen from two "replicas" (two independent stores on one Redis), and what happens when Redis
//! stops, hangs and comes back.
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use llmux::access::key::KeyDigest;
use llmux::access::limits::{Measure, Rule, Window};
use llmux::access::store::{
    Acquired, Adjustment, Charge, CounterKey, CounterStore, KeyLimit, MemoryStore,
};
use llmux::config::load::parse_file;
use llmux::routing::table::RoutingTable;
use llmux::shared::connection::RedisState;
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

/// A key's limit counter (key `byte`), as access control names it.
fn counter(byte: u8, limit: KeyLimit) -> CounterKey {
    CounterKey::Key {
        digest: KeyDigest([byte; 32]),
        limit,
    }
}

fn per_minute(byte: u8, limit: u64) -> Charge {
    Charge {
        counter: counter(byte, KeyLimit::RequestsPerMinute),
        rule: Rule::Smooth { limit },
        cost: 1,
    }
}

fn tokens_per_day(byte: u8, limit: u64, cost: u64) -> Charge {
    Charge {
        counter: counter(byte, KeyLimit::TokensPerDay),
        rule: Rule::windowed(limit, Window::Day),
        cost,
    }
}

fn slot(byte: u8, limit: u64) -> Charge {
    Charge {
        counter: counter(byte, KeyLimit::MaxConcurrentRequests),
        rule: Rule::Concurrent { limit },
        cost: 1,
    }
}

fn release(charge: &Charge) -> Adjustment {
    Adjustment {
        counter: charge.counter.clone(),
        rule: charge.rule,
        delta: -1,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn acquire(replica: &SharedState, charges: &[Charge]) -> Acquired {
    replica
        .counters
        .acquire(now_ms(), charges)
        .await
        .expect("redis answers")
}

#[tokio::test]
async fn a_60_per_minute_key_admits_60_across_replicas_and_limits_are_all_or_none() {
    let redis = RedisServer::start();
    let replicas = [
        replica(&redis, settings()),
        replica(&redis, settings()),
        replica(&redis, settings()),
    ];
    let limits = [per_minute(1, 60)];
    let mut admitted = 0;
    for round in 0..100 {
        let acquired = acquire(&replicas[round % 3], &limits).await;
        match acquired.admitted {
            true => admitted += 1,
            false => {
                let retry_after = acquired.readings[0].retry_after;
                assert!(
                    retry_after <= Duration::from_secs(1) && !retry_after.is_zero(),
                    "{retry_after:?}"
                );
            }
        }
    }
    assert!((60..=61).contains(&admitted), "admitted {admitted} of 100");

    // A daily token budget of 100: a reservation of 80, settled to 20 used by another replica.
    let budget = |cost| [per_minute(2, 1000), tokens_per_day(2, 100, cost)];
    let first = acquire(&replicas[0], &budget(80)).await;
    assert!(first.admitted);
    assert_eq!(first.readings[1].remaining, 20);
    let refused = acquire(&replicas[1], &budget(30)).await;
    assert!(!refused.admitted);
    assert_eq!(
        refused.readings[0].remaining, 999,
        "what the refused request would have used is not charged"
    );
    replicas[2].counters.adjust(
        now_ms(),
        &[Adjustment {
            counter: counter(2, KeyLimit::TokensPerDay),
            rule: Rule::windowed(100, Window::Day),
            delta: -60,
        }],
    );
    // Adjustments go out in the background, within the deadline.
    eventually(
        "the settlement counts",
        Duration::from_secs(3),
        async || {
            acquire(&replicas[1], &[tokens_per_day(2, 100, 0)])
                .await
                .readings[0]
                .remaining
                == 80
        },
    )
    .await;
    assert!(acquire(&replicas[1], &budget(80)).await.admitted);
    let full = acquire(&replicas[0], &budget(1)).await;
    assert!(!full.admitted);
    assert_eq!(full.readings[1].remaining, 0);
    assert!(full.readings[1].retry_after > Duration::from_secs(1));
}

/// The same admissions, spread over three replicas on Redis and run on one memory store, get
/// the same decisions and the same remaining counts.
#[tokio::test]
async fn redis_counters_decide_as_the_memory_store_does() {
    let redis = RedisServer::start();
    let replicas = [
        replica(&redis, settings()),
        replica(&redis, settings()),
        replica(&redis, settings()),
    ];
    let memory = MemoryStore::new();
    let mut admitted = 0;
    let hourly = |cost| Charge {
        counter: CounterKey::Quota {
            rule: "policy:/v1/chat/completions:*:hour".into(),
            measure: Measure::Requests,
            owner: Some("alice".into()),
        },
        rule: Rule::windowed(25, Window::Hour),
        cost,
    };
    for round in 0..40u64 {
        let charges = [
            slot(3, 2),
            per_minute(3, 30),
            hourly(1),
            tokens_per_day(3, 500, round * 7 % 60),
        ];
        let now = now_ms();
        let expected = memory.acquire_now(now, &charges);
        let got = replicas[round as usize % 3]
            .counters
            .acquire(now, &charges)
            .await
            .unwrap();
        assert_eq!(got.admitted, expected.admitted, "round {round}");
        admitted += usize::from(got.admitted);
        for (index, (got, expected)) in got.readings.iter().zip(&expected.readings).enumerate() {
            // The minute limit drains by Redis's clock there, by the test's here: a few ms apart.
            let tolerance = u64::from(index == 1);
            assert!(
                got.remaining.abs_diff(expected.remaining) <= tolerance,
                "round {round}, limit {index}: {got:?} on Redis, {expected:?} in memory"
            );
        }
        if got.admitted {
            // The slot is given back by the replica that took it, before the next round.
            let released = [release(&charges[0])];
            memory.adjust(now, &released);
            replicas[round as usize % 3].counters.adjust(now, &released);
            let look = [Charge {
                cost: 0,
                ..slot(3, 2)
            }];
            eventually("the slot is back", Duration::from_secs(3), async || {
                acquire(&replicas[(round as usize + 1) % 3], &look)
                    .await
                    .readings[0]
                    .remaining
                    == 2
            })
            .await;
        }
    }
    assert!(
        (10..30).contains(&admitted),
        "the run reached a limit: {admitted} of 40 admitted"
    );
}

#[tokio::test]
async fn concurrency_slots_are_shared_and_freed_when_their_replica_dies() {
    let redis = RedisServer::start();
    let mut short = settings();
    short.lease_ttl = Duration::from_millis(600);
    let (a, b) = (replica(&redis, short), replica(&redis, short));
    let two = [slot(4, 2)];

    assert!(acquire(&a, &two).await.admitted);
    assert!(acquire(&b, &two).await.admitted);
    assert!(!acquire(&a, &two).await.admitted);
    // Held slots are renewed: still held well past the TTL.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!acquire(&b, &two).await.admitted);

    a.counters.adjust(now_ms(), &[release(&two[0])]);
    eventually(
        "a released slot is free",
        Duration::from_secs(3),
        async || acquire(&b, &two).await.admitted,
    )
    .await;
    // b holds two now; it gives one back, and a replica that dies takes it.
    b.counters.adjust(now_ms(), &[release(&two[0])]);
    let dying = replica(&redis, short);
    eventually(
        "the dying replica takes the slot b gave back",
        Duration::from_secs(3),
        async || acquire(&dying, &two).await.admitted,
    )
    .await;
    let taken = Instant::now();
    // It dies mid-request: nothing releases or renews its slot.
    drop(dying);
    assert!(!acquire(&a, &two).await.admitted);
    eventually(
        "the dead replica's slot is freed",
        Duration::from_secs(3),
        async || acquire(&a, &two).await.admitted,
    )
    .await;
    let lived = taken.elapsed();
    assert!(
        lived >= Duration::from_millis(500),
        "freed after {lived:?}, before its TTL"
    );
    // b's slot, renewed all along, still counts: a holds one, b one.
    assert!(!acquire(&a, &two).await.admitted);
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
    let limits = [slot(5, 1), per_minute(5, 100)];
    assert!(acquire(&a, &limits).await.admitted);
    a.counters.adjust(now_ms(), &[release(&limits[0])]);

    redis.stop();
    for round in 0..20 {
        let open = within_deadline("acquire", a.counters.acquire(now_ms(), &limits)).await;
        let open = open.expect("fails open");
        assert!(open.admitted, "round {round}");
        assert_eq!(open.readings[1].remaining, 99, "as if nothing were counted");
        a.counters.adjust(now_ms(), &[release(&limits[0])]);
        let refused = within_deadline("acquire", strict.counters.acquire(now_ms(), &limits)).await;
        assert!(refused.is_err(), "round {round}: fails closed");
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
            strict
                .counters
                .acquire(now_ms(), &[per_minute(5, 100)])
                .await
                .is_ok_and(|acquired| acquired.admitted)
        },
    )
    .await;
    // Counted in Redis again, across replicas: one slot, taken by b, is full for a.
    let one = [slot(6, 1)];
    eventually(
        "slots are shared again",
        Duration::from_secs(5),
        async || {
            a.counters
                .acquire(now_ms(), &one)
                .await
                .is_ok_and(|acquired| acquired.admitted)
        },
    )
    .await;
    assert!(!acquire(&b, &one).await.admitted);
    assert_eq!(a.redis.as_ref().unwrap().health().state(), RedisState::Up);
}

#[tokio::test]
async fn a_hung_redis_costs_a_request_at_most_the_deadline_then_nothing_while_backing_off() {
    let redis = RedisServer::start();
    let a = replica(&redis, impatient());
    let limits = [per_minute(7, 100)];
    assert!(acquire(&a, &limits).await.admitted);

    redis.freeze();
    let started = Instant::now();
    for _ in 0..50 {
        let acquired = within_deadline("acquire", a.counters.acquire(now_ms(), &limits)).await;
        assert!(acquired.expect("fails open").admitted);
    }
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
            a.counters
                .acquire(now_ms(), &limits)
                .await
                .is_ok_and(|acquired| acquired.readings[0].remaining < 98)
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
    let _ = within_deadline(
        "acquire",
        shared.counters.acquire(now_ms(), &[per_minute(8, 1)]),
    )
    .await;
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
        let _ = shared.counters.acquire(now_ms(), &[per_minute(8, 1)]).await;
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
