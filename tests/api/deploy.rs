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

fn env_of<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .and_then(|v| v["value"].as_str())
}

/// `768Mi` -> bytes; `2` or `500m` -> millicores.
fn quantity(text: &str) -> u64 {
    for (suffix, factor) in [("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10), ("m", 1)] {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u64>().unwrap() * factor;
        }
    }
    text.parse::<u64>().unwrap() * 1000
}

fn deployment_pod() -> Value {
    let objects = kubernetes_objects();
    of_kind(&objects, "Deployment")["spec"]["template"]["spec"].clone()
}

#[test]
fn the_pod_spools_uploads_to_an_empty_dir_under_its_read_only_root() {
    // Issue 20: readOnlyRootFilesystem with no writable /tmp made uploads with `file` first a 500.
    let pod = deployment_pod();
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let spool = env_of(container, "LLMUX_SPOOL_DIR").expect("LLMUX_SPOOL_DIR is set");
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(spool))
        .expect("the spool dir is mounted");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(volume["emptyDir"].is_mapping(), "{volume:?}");
}

#[test]
fn the_memory_limit_fits_the_image_cache_by_the_documented_rule() {
    // Issue 20: a 512Mi limit with the 512 MiB default cache was OOM-killed once the cache filled.
    let pod = deployment_pod();
    let container = &pod["containers"][0];
    let cache: u64 = env_of(container, "LLMUX_IMAGE_CACHE_BYTES")
        .map_or(llmux::cli::ServeArgs::new(".").image_cache_bytes, |v| {
            v.parse().unwrap()
        });
    let limit = quantity(container["resources"]["limits"]["memory"].as_str().unwrap());
    assert!(
        limit >= 2 * cache + (256 << 20),
        "memory limit {limit} < 2 x image cache {cache} + 256 MiB"
    );
    assert!(repo_file("deploy/kubernetes/deployment.yaml")
        .contains("memory limit >= 2 x LLMUX_IMAGE_CACHE_BYTES + 256 MiB"));
}

#[test]
fn the_termination_grace_covers_the_pre_stop_sleep_drain_delay_and_shutdown_grace() {
    let pod = deployment_pod();
    let container = &pod["containers"][0];
    let command = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("a preStop hook");
    assert_eq!(command[0].as_str(), Some("sleep"));
    let pre_stop: u64 = command[1].as_str().unwrap().parse().unwrap();
    let drain: u64 = env_of(container, "LLMUX_DRAIN_DELAY")
        .expect("LLMUX_DRAIN_DELAY is set")
        .parse()
        .unwrap();
    let grace = grace_of(&container["env"]);
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination > pre_stop + drain + grace,
        "{termination} <= {pre_stop} + {drain} + {grace}"
    );
}

#[test]
fn the_pod_meets_pod_security_restricted_and_pins_its_image() {
    let pod = deployment_pod();
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    let image = container["image"].as_str().unwrap();
    assert!(
        image.contains(':') && !image.ends_with(":latest"),
        "{image}"
    );
    assert_ne!(container["imagePullPolicy"].as_str(), Some("Always"));
}

#[test]
fn the_cpu_limit_matches_the_worker_count() {
    let pod = deployment_pod();
    let container = &pod["containers"][0];
    let workers: u64 = env_of(container, "LLMUX_WORKERS")
        .expect("LLMUX_WORKERS is set: the default follows the node's cores, not the limit")
        .parse()
        .unwrap();
    let cpu = quantity(container["resources"]["limits"]["cpu"].as_str().unwrap());
    assert_eq!(cpu.div_ceil(1000), workers);
}

#[test]
fn kubectl_apply_k_never_overwrites_the_operators_secret() {
    let kustomization = documents("deploy/kubernetes/kustomization.yaml").remove(0);
    let resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for resource in &resources {
        let objects = documents(&format!("deploy/kubernetes/{resource}"));
        assert!(
            objects.iter().all(|o| o["kind"].as_str() != Some("Secret")),
            "{resource} holds a Secret"
        );
    }
    for needed in ["deployment.yaml", "service.yaml", "configmap.yaml"] {
        assert!(resources.contains(&needed), "{resources:?}");
    }
    assert!(repo_file("deploy/kubernetes/secret.example.yaml").contains("kubectl create secret"));
}

#[test]
fn compose_publishes_on_loopback_only_with_limits_that_follow_the_rules() {
    let compose = documents("deploy/docker-compose.yml").remove(0);
    let llmux = &compose["services"]["llmux"];
    for port in llmux["ports"].as_sequence().unwrap() {
        assert!(port.as_str().unwrap().starts_with("127.0.0.1:"), "{port:?}");
    }
    let environment = &llmux["environment"];
    let workers: f64 = environment["LLMUX_WORKERS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(llmux["cpus"].as_f64(), Some(workers));
    let cache: u64 = environment["LLMUX_IMAGE_CACHE_BYTES"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let memory: u64 = llmux["mem_limit"]
        .as_str()
        .unwrap()
        .trim_end_matches('m')
        .parse::<u64>()
        .unwrap()
        << 20;
    assert!(memory >= 2 * cache + (256 << 20));
    assert_eq!(llmux["read_only"].as_bool(), Some(true));
    let spool = environment["LLMUX_SPOOL_DIR"].as_str().unwrap();
    assert!(llmux["tmpfs"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|t| t.as_str() == Some(spool)));
}

#[test]
fn the_dockerfile_builds_dependencies_in_their_own_layer_and_release_builds_strip() {
    let dockerfile = repo_file("Dockerfile");
    let manifests = dockerfile.find("COPY Cargo.toml Cargo.lock").unwrap();
    let sources = dockerfile.find("COPY src ./src").unwrap();
    let dependency_build = dockerfile[manifests..sources]
        .find("cargo build --release")
        .expect("a cargo build between copying the manifests and the sources");
    assert!(manifests + dependency_build < sources);
    let cargo: toml_like::Manifest = toml_like::read(&repo_file("Cargo.toml"));
    assert_eq!(cargo.release_strip.as_deref(), Some("true"));
}

/// Just enough of Cargo.toml: the `strip` key of `[profile.release]`.
mod toml_like {
    pub struct Manifest {
        pub release_strip: Option<String>,
    }

    pub fn read(text: &str) -> Manifest {
        let mut section = "";
        let mut release_strip = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if section == "[profile.release]" {
                if let Some(value) = line.strip_prefix("strip = ") {
                    release_strip = Some(value.to_owned());
                }
            }
        }
        Manifest { release_strip }
    }
}

#[test]
fn the_dashboard_scopes_process_panels_to_llmux_and_filters_by_instance() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/llmux.json")).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"instance"), "{variables:?}");
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            assert!(expr.contains("instance=~\"$instance\""), "{title}: {expr}");
            if expr.contains("process_") {
                assert!(expr.contains("llmux_build_info"), "{title}: {expr}");
            }
        }
        if matches!(
            title,
            "Endpoints up" | "Endpoints ejected" | "Config errors"
        ) {
            let defaults = &panel["fieldConfig"]["defaults"];
            assert!(
                defaults["thresholds"]["steps"]
                    .as_array()
                    .is_some_and(|s| s.len() >= 2),
                "{title}"
            );
            assert!(
                defaults["mappings"]
                    .as_array()
                    .is_some_and(|m| !m.is_empty()),
                "{title}"
            );
        }
    }
}
