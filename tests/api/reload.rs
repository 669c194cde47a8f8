//! Live config: edits in the config dir go live without a restart; a broken file keeps its last
//! good routes; GET /admin/config shows what is served.
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{eventually, provider_file, Binary, Spawn, TestApp};

/// Generous: the requirement is 2 s, the test machine is shared.
const DEADLINE: Duration = Duration::from_secs(10);

fn write(app: &TestApp, name: &str, config: &Value) {
    let text = config.to_string().replace("{UPSTREAM}", &app.upstream.url);
    std::fs::write(app.config_dir.path().join(name), text).unwrap();
}

/// The target model the upstream received for a chat request to `model`, or the status code.
async fn chat(app: &TestApp, model: &str) -> Result<String, u16> {
    let response = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(status);
    }
    let body: Value = response.json().await.unwrap();
    Ok(body["model"].as_str().unwrap().to_owned())
}

async fn admin_config(app: &TestApp) -> Value {
    let response = app
        .http
        .get(app.url("/admin/config"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn file_entry<'a>(config: &'a Value, name: &str) -> Option<&'a Value> {
    config["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == name)
}

async fn app_serving_m() -> TestApp {
    Spawn::new()
        .admin_token_v1_open()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .start()
        .await
}

#[tokio::test]
async fn a_new_file_is_served_within_two_seconds() {
    let app = app_serving_m().await;
    assert_eq!(chat(&app, "n").await, Err(404));

    write(
        &app,
        "second.json",
        &provider_file("other", "", &[("n", "target-n")]),
    );
    let (_, took) = eventually(DEADLINE, "model n to be served", || async {
        chat(&app, "n").await.ok().filter(|t| t == "target-n")
    })
    .await;

    eprintln!("a new file went live after {} ms", took.as_millis());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(chat(&app, "m").await, Ok("target-m".into()));
}

#[tokio::test]
async fn an_edited_target_model_name_is_used_by_the_next_request() {
    let app = app_serving_m().await;
    assert_eq!(chat(&app, "m").await, Ok("target-m".into()));

    let started = Instant::now();
    write(
        &app,
        "provider.json",
        &provider_file("mock", "", &[("m", "target-m-v2")]),
    );
    let (_, took) = eventually(DEADLINE, "the new target", || async {
        chat(&app, "m").await.ok().filter(|t| t == "target-m-v2")
    })
    .await;

    eprintln!("an edit went live after {} ms", took.as_millis());
    assert!(started.elapsed() < Duration::from_secs(5), "took {took:?}");
    assert_eq!(app.upstream.last_request().json()["model"], "target-m-v2");
    // And it stays that way.
    for _ in 0..5 {
        assert_eq!(chat(&app, "m").await, Ok("target-m-v2".into()));
    }
}

#[tokio::test]
async fn a_deleted_file_takes_its_routes_and_only_its_routes_away() {
    let app = Spawn::new()
        .admin_token_v1_open()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .file(
            "second.json",
            provider_file("other", "", &[("n", "target-n")]),
        )
        .start()
        .await;
    assert_eq!(chat(&app, "n").await, Ok("target-n".into()));

    std::fs::remove_file(app.config_dir.path().join("second.json")).unwrap();
    eventually(DEADLINE, "model n to go", || async {
        (chat(&app, "n").await == Err(404)).then_some(())
    })
    .await;

    assert_eq!(chat(&app, "m").await, Ok("target-m".into()));
    let config = admin_config(&app).await;
    assert!(file_entry(&config, "second.json").is_none(), "{config}");
    assert!(file_entry(&config, "provider.json").is_some(), "{config}");
}

#[tokio::test]
async fn a_renamed_file_is_a_delete_plus_an_add() {
    let app = app_serving_m().await;
    let dir = app.config_dir.path();

    std::fs::rename(dir.join("provider.json"), dir.join("renamed.json")).unwrap();
    let (config, _) = eventually(DEADLINE, "the rename to show", || async {
        let config = admin_config(&app).await;
        file_entry(&config, "provider.json")
            .is_none()
            .then_some(config)
    })
    .await;
    let renamed = file_entry(&config, "renamed.json").expect("renamed file listed");
    assert_eq!(renamed["status"], "ok");
    assert!(renamed["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["model"] == "m"));
    assert_eq!(chat(&app, "m").await, Ok("target-m".into()));

    // Renamed to something that is not a config file: its routes go.
    std::fs::rename(dir.join("renamed.json"), dir.join("renamed.json.bak")).unwrap();
    eventually(DEADLINE, "model m to go", || async {
        (chat(&app, "m").await == Err(404)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_broken_file_keeps_its_last_good_routes_until_it_is_repaired() {
    let app = Spawn::new()
        .admin_token_v1_open()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .file(
            "second.json",
            provider_file("other", "", &[("n", "target-n")]),
        )
        .start()
        .await;
    let path = app.config_dir.path().join("provider.json");

    // Invalid JSON: the file fails, its last good version keeps serving.
    std::fs::write(&path, "{\n  \"mock\": {\n    \"models\": {,\n").unwrap();
    let (entry, _) = eventually(DEADLINE, "the syntax error to show", || async {
        let config = admin_config(&app).await;
        let entry = file_entry(&config, "provider.json").cloned().unwrap();
        (entry["status"] == "serving_last_good").then_some(entry)
    })
    .await;
    let error = &entry["errors"][0];
    assert_eq!(error["line"], 3, "{entry}");
    assert!(error["column"].as_u64().unwrap() > 0, "{entry}");
    assert!(
        entry["serving_since"].is_string() && entry["failing_since"].is_string(),
        "{entry}"
    );
    assert!(entry["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["target_model_name"] == "target-m"));
    assert_eq!(chat(&app, "m").await, Ok("target-m".into()));

    // Wrong types: still failing, now pointing at the bad value.
    std::fs::write(&path, "{\n  \"mock\": {\n    \"target_base_url\": \"http://127.0.0.1:9\",\n    \"models\": 3\n  }\n}").unwrap();
    let (entry, _) = eventually(DEADLINE, "the type error to show", || async {
        let config = admin_config(&app).await;
        let entry = file_entry(&config, "provider.json").cloned().unwrap();
        let message = entry["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        message.contains("invalid type").then_some(entry)
    })
    .await;
    assert_eq!(entry["status"], "serving_last_good", "{entry}");
    assert_eq!(entry["errors"][0]["json_path"], "mock.models", "{entry}");
    assert_eq!(entry["errors"][0]["line"], 4, "{entry}");
    assert_eq!(chat(&app, "m").await, Ok("target-m".into()));
    assert_eq!(
        chat(&app, "n").await,
        Ok("target-n".into()),
        "other files are untouched"
    );

    // Repaired, with a new target: served, status ok.
    write(
        &app,
        "provider.json",
        &provider_file("mock", "", &[("m", "target-m-fixed")]),
    );
    eventually(DEADLINE, "the repaired file", || async {
        chat(&app, "m").await.ok().filter(|t| t == "target-m-fixed")
    })
    .await;
    let config = admin_config(&app).await;
    let entry = file_entry(&config, "provider.json").unwrap();
    assert_eq!(entry["status"], "ok", "{entry}");
    assert!(entry["failing_since"].is_null() && entry["errors"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_new_file_that_fails_serves_nothing_and_says_why() {
    let app = app_serving_m().await;

    std::fs::write(
        app.config_dir.path().join("bad.json"),
        "{\"p\": {\"target_base_url\": \"ftp://x\", \"models\": {}}}",
    )
    .unwrap();
    let (entry, _) = eventually(DEADLINE, "the bad file to show", || async {
        file_entry(&admin_config(&app).await, "bad.json").cloned()
    })
    .await;

    assert_eq!(entry["status"], "error", "{entry}");
    assert!(entry["serving_since"].is_null(), "{entry}");
    assert!(entry["routes"].as_array().unwrap().is_empty(), "{entry}");
    assert_eq!(
        entry["errors"][0]["json_path"], "p.target_base_url",
        "{entry}"
    );
    assert_eq!(chat(&app, "m").await, Ok("target-m".into()));
}

#[tokio::test]
async fn admin_config_shows_routes_and_key_status_but_never_a_key() {
    let app = app_serving_m().await;

    let config = admin_config(&app).await;

    assert!(config["generation"].as_u64().unwrap() >= 1, "{config}");
    assert!(
        config["loaded_at"].as_str().unwrap().ends_with('Z'),
        "{config}"
    );
    let entry = file_entry(&config, "provider.json").unwrap();
    assert_eq!(entry["status"], "ok");
    let route = entry["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/v1/chat/completions")
        .unwrap();
    assert_eq!(route["model"], "m");
    assert_eq!(route["target_model_name"], "target-m");
    assert_eq!(route["key_variable"], "TEST_PROVIDER_KEY");
    assert_eq!(route["key"], "set");
    assert!(
        !config.to_string().contains(crate::helpers::PROVIDER_KEY),
        "{config}"
    );
}

#[tokio::test]
async fn a_touched_file_with_no_change_causes_no_route_churn() {
    let app = app_serving_m().await;
    let before = admin_config(&app).await;
    let path = app.config_dir.path().join("provider.json");
    let text = std::fs::read(&path).unwrap();

    // Rewritten with the same bytes: events fire, a reload runs, nothing changes.
    std::fs::write(&path, &text).unwrap();
    let (after, _) = eventually(DEADLINE, "a reload", || async {
        let after = admin_config(&app).await;
        (after["reloads"].as_u64() > before["reloads"].as_u64()).then_some(after)
    })
    .await;

    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["loaded_at"], before["loaded_at"]);
    let file = |c: &Value| file_entry(c, "provider.json").unwrap()["serving_since"].clone();
    assert_eq!(file(&after), file(&before));
}

/// A Kubernetes ConfigMap mount: `provider.json -> ..data/provider.json`, `..data -> ..<stamp>`;
/// an update writes a new stamped dir and swaps `..data` in one rename.
#[tokio::test]
async fn a_configmap_data_swap_is_reloaded_and_dot_entries_are_never_loaded() {
    let app = Spawn::new().admin_token_v1_open().start().await;
    let dir = app.config_dir.path();
    let version = |stamp: &str, target: &str| {
        let versioned = dir.join(stamp);
        std::fs::create_dir(&versioned).unwrap();
        let text = provider_file("mock", "", &[("m", target)])
            .to_string()
            .replace("{UPSTREAM}", &app.upstream.url);
        std::fs::write(versioned.join("provider.json"), text).unwrap();
    };
    version("..2026_11_22_21_00_00.1", "target-v1");
    std::os::unix::fs::symlink("..2026_11_22_21_00_00.1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/provider.json", dir.join("provider.json")).unwrap();
    eventually(DEADLINE, "version 1", || async {
        chat(&app, "m").await.ok().filter(|t| t == "target-v1")
    })
    .await;

    version("..2026_11_22_21_05_00.2", "target-v2");
    std::os::unix::fs::symlink("..2026_11_22_21_05_00.2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_22_21_00_00.1")).unwrap();
    eventually(DEADLINE, "version 2", || async {
        chat(&app, "m").await.ok().filter(|t| t == "target-v2")
    })
    .await;

    let config = admin_config(&app).await;
    let files: Vec<&str> = config["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, vec!["provider.json"], "{config}");
    assert_eq!(
        file_entry(&config, "provider.json").unwrap()["status"],
        "ok"
    );
}

#[tokio::test]
async fn polling_mode_sees_edits_too() {
    let app = Spawn::new()
        .admin_token_v1_open()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .args(|args| args.watch = llmux::config::watch::WatchMode::Poll)
        .start()
        .await;

    write(
        &app,
        "provider.json",
        &provider_file("mock", "", &[("m", "target-polled")]),
    );
    let (_, took) = eventually(DEADLINE, "the polled edit", || async {
        chat(&app, "m").await.ok().filter(|t| t == "target-polled")
    })
    .await;

    eprintln!(
        "--watch poll: an edit went live after {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// Clients send requests non-stop while the file is rewritten 50 times (plain truncate-and-write,
/// so the watcher also sees half-written files), alternating two versions that both serve `m`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_fifty_rewrites_fail_no_request_and_mix_no_versions() {
    let app = Arc::new(
        Spawn::new()
            .admin_token_v1_open()
            .file(
                "provider.json",
                provider_file("mock", "", &[("m", "target-a")]),
            )
            .start()
            .await,
    );
    let versions = [
        provider_file("mock", "", &[("m", "target-a")]),
        provider_file("mock", "", &[("m", "target-b"), ("extra", "target-extra")]),
    ];
    let generation_before = admin_config(&app).await["generation"].as_u64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, usize>::new(),
    ));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (app, stop, failures, seen, sent) = (
                Arc::clone(&app),
                Arc::clone(&stop),
                Arc::clone(&failures),
                Arc::clone(&seen),
                Arc::clone(&sent),
            );
            tokio::spawn(async move {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match chat(&app, "m").await {
                        Ok(target) => *seen.lock().unwrap().entry(target).or_default() += 1,
                        Err(status) => failures.lock().unwrap().push(status),
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    for i in 0..50 {
        write(&app, "provider.json", &versions[(i + 1) % 2]);
        // Some rewrites land inside one debounce window, some after a reload.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(20..=300))).await;
    }
    let rewriting = started.elapsed();
    // The last write (version a) must win.
    eventually(DEADLINE, "the last version", || async {
        let config = admin_config(&app).await;
        let entry = file_entry(&config, "provider.json").cloned().unwrap();
        let routes = entry["routes"].as_array().unwrap().clone();
        (entry["status"] == "ok" && routes.iter().all(|r| r["target_model_name"] == "target-a"))
            .then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    let seen = seen.lock().unwrap().clone();
    let config = admin_config(&app).await;
    eprintln!(
        "under load: {} requests in {:?} of rewriting, failures {:?}, targets {:?}, generations {} -> {}, reloads {}",
        sent.load(Ordering::Relaxed),
        rewriting,
        failures,
        seen,
        generation_before,
        config["generation"],
        config["reloads"]
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        seen.keys().all(|t| t == "target-a" || t == "target-b"),
        "{seen:?}"
    );
    assert!(seen.len() == 2, "both versions served: {seen:?}");
    assert!(
        config["generation"].as_u64().unwrap() > generation_before + 2,
        "{config}"
    );
}

#[tokio::test]
async fn sighup_forces_a_full_reload_even_without_watching() {
    let dir = tempfile::tempdir().unwrap();
    let file = |models: Value| {
        json!({"p": {"target_base_url": "http://127.0.0.1:9", "models": models}}).to_string()
    };
    let endpoint =
        json!({"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]});
    std::fs::write(dir.path().join("a.json"), file(json!({"m": endpoint}))).unwrap();
    let server = Binary::start(dir.path(), &["--watch", "off"], &[]).await;
    let base = server.url("");
    let http = reqwest::Client::new();
    let model_status = |model: &str| {
        let request = http.get(format!("{base}/v1/models/{model}"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(model_status("m").await, 200);

    std::fs::write(
        dir.path().join("a.json"),
        file(json!({"m": endpoint, "n": endpoint})),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(model_status("n").await, 404, "--watch off does not watch");

    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(DEADLINE, "model n after SIGHUP", || async {
        (model_status("n").await == 200).then_some(())
    })
    .await;

    let (line, _) = eventually(DEADLINE, "the reload line", || async {
        server.lines_with("config reloaded").pop()
    })
    .await;
    let summary: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(summary["reason"], "sighup", "{summary}");
    assert_eq!(summary["files_read"], 1, "{summary}");
    assert_eq!(summary["routes_added"], 1, "{summary}");
    assert_eq!(model_status("m").await, 200);
}

#[test]
fn help_documents_the_watch_flag_and_its_env_var() {
    let output = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in ["--watch", "LLMUX_WATCH", "notify", "poll", "off"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["--watch", "sometimes", "--port", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("sometimes"));
}
