//! deploy/ and the Dockerfile: parseable, with the kinds, probes and grace periods llmux needs.
use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml_ng::Value;

fn repo_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a (multi-document) YAML file.
fn documents(path: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(&repo_file(path))
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn kubernetes_objects() -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
        .flat_map(|f| {
            documents(&format!(
                "deploy/kubernetes/{}",
                f.file_name().unwrap().to_str().unwrap()
            ))
        })
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

fn grace_of(env: &Value) -> u64 {
    env.as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("LLMUX_SHUTDOWN_GRACE"))
        .map_or(30, |v| v["value"].as_str().unwrap().parse().unwrap())
}

#[test]
fn kubernetes_manifests_probe_health_and_ready_and_outlast_the_shutdown_grace() {
    let objects = kubernetes_objects();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in ["Deployment", "ConfigMap", "Secret", "Service"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }

    let pod = &of_kind(&objects, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/health")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    let grace = grace_of(&container["env"]);
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination > grace,
        "terminationGracePeriodSeconds {termination} <= shutdown grace {grace}"
    );

    // The ConfigMap is mounted at /configs and each of its files is a config llmux loads.
    let config_map = of_kind(&objects, "ConfigMap");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == config_map["metadata"]["name"])
        .expect("the ConfigMap is a volume");
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the volume is mounted");
    assert_eq!(mount["mountPath"].as_str(), Some("/configs"));
    for (name, text) in config_map["data"].as_mapping().unwrap() {
        let load = llmux::config::load::parse_file(
            std::path::Path::new(name.as_str().unwrap()),
            text.as_str().unwrap(),
            &|_| Some("key".into()),
        );
        assert!(load.problems.is_empty(), "{:?}", load.problems);
        assert!(!load.endpoints.unwrap().is_empty());
    }

    // Provider keys come from the Secret, as environment variables.
    let secret = of_kind(&objects, "Secret");
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    let service = of_kind(&objects, "Service");
    assert_eq!(
        service["spec"]["selector"],
        of_kind(&objects, "Deployment")["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn compose_mounts_the_configs_and_waits_longer_than_the_grace() {
    let compose = documents("deploy/docker-compose.yml").remove(0);
    let llmux = &compose["services"]["llmux"];
    let volumes: Vec<&str> = llmux["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        volumes.iter().any(|v| v.starts_with("../configs:/configs")),
        "{volumes:?}"
    );
    assert_eq!(
        llmux["healthcheck"]["test"][2].as_str(),
        Some("healthcheck")
    );
    assert_eq!(
        llmux["environment"]["LLMUX_CONFIG_DIR"].as_str(),
        Some("/configs")
    );
    let stop: u64 = llmux["stop_grace_period"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let grace: u64 = llmux["environment"]["LLMUX_SHUTDOWN_GRACE"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(stop > grace);
}

#[test]
fn the_dockerfile_runs_as_non_root_with_a_curl_free_healthcheck() {
    let dockerfile = repo_file("Dockerfile");
    for needle in [
        "FROM rust:1-slim-bookworm AS builder",
        "FROM debian:bookworm-slim",
        "USER 10001",
        "EXPOSE 8000",
        "LLMUX_HOST=0.0.0.0",
        "LLMUX_CONFIG_DIR=/configs",
        "CMD [\"llmux\", \"healthcheck\"]",
        "COPY configs /configs",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks `{needle}`");
    }
    assert!(!dockerfile.contains("curl"));
}
