//! `docker-compose.yml`, checked by a real Compose implementation (the compose-spec Go loader,
//! deploy/check/compose) and every value in it against what the code reads and serves: its
//! settings file through [`Settings::load`], its images against the Dockerfile's stages, its
//! ports, probes and Redpanda addresses against the settings, Prometheus' scrape targets against
//! the roles' metrics listeners. `deploy/local/deploy-tools` installs the tools on first use.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod deploy_tools;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use deploy_tools::{authority, flag, load, port, root, run, strings};
use onceflow::config::SecretRef;
use serde_json::Value;

fn compose() -> Value {
    serde_json::from_str(&run("compose-check", &["docker-compose.yml"], root()))
        .expect("compose-check prints JSON")
}

#[test]
fn compose_file_loads_and_every_value_in_it_is_one_onceflow_reads() {
    let project = compose();
    let services = project["services"].as_object().unwrap();
    let s = load("deploy/compose/onceflow.toml");
    assert!(!s.adapters.is_empty());

    // Every role is there: one processor and one dispatcher per configured adapter.
    let mut want: BTreeSet<String> = [
        "redpanda",
        "redpanda-console",
        "topics",
        "sandbox",
        "ingest",
        "console",
        "prometheus",
        "grafana",
    ]
    .map(String::from)
    .into();
    for a in s.adapters.keys() {
        want.insert(format!("process-{a}"));
        want.insert(format!("deliver-{a}"));
    }
    let have: BTreeSet<String> = services.keys().cloned().collect();
    assert_eq!(have, want);

    // Images: onceflow's are built from the Dockerfile's stages.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stages: BTreeSet<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1))
        .collect();
    for (name, svc) in services {
        if let Some(target) = svc["build"]["target"].as_str() {
            assert!(
                stages.contains(target),
                "{name}: no stage {target} in the Dockerfile"
            );
            assert_eq!(
                svc["build"]["context"].as_str().map(Path::new),
                Some(root()),
                "{name}"
            );
        } else {
            let image = svc["image"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no image"));
            let (_, tag) = image
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{name}: {image} is not pinned"));
            assert!(
                tag != "latest" && !tag.is_empty(),
                "{name}: {image} is not pinned"
            );
        }
        // Every file or folder it mounts exists in the repository.
        for v in svc["volumes"].as_array().into_iter().flatten() {
            if v["type"] == "bind" {
                let source = Path::new(v["source"].as_str().unwrap());
                assert!(
                    source.starts_with(root()),
                    "{name}: {} is outside the repository",
                    source.display()
                );
                assert!(
                    source.exists(),
                    "{name}: {} does not exist",
                    source.display()
                );
            }
        }
    }

    // onceflow's roles: the settings file mounted where ONCEFLOW_CONFIG says, every secret the
    // settings name set, the verbs and flags the binary has, probes on the listeners it serves.
    let mount = |svc: &Value| -> Option<(String, String)> {
        svc["volumes"].as_array()?.iter().find_map(|v| {
            let target = v["target"].as_str()?;
            target.ends_with(".toml").then(|| {
                (
                    v["source"].as_str().unwrap().to_string(),
                    target.to_string(),
                )
            })
        })
    };
    let mut env_secrets: Vec<&str> = Vec::new();
    for a in s.adapters.values() {
        if let Some(SecretRef::Env(n)) = &a.credentials {
            env_secrets.push(n);
        }
    }
    for src in s.ingest.sources.values() {
        if let SecretRef::Env(n) = &src.secret {
            env_secrets.push(n);
        }
    }
    if let Some(SecretRef::Env(n)) = &s.console.token {
        env_secrets.push(n);
    }
    assert!(env_secrets.len() > s.adapters.len(), "{env_secrets:?}");
    let mut probed = BTreeMap::new();
    for (name, svc) in services {
        if svc["image"] != "onceflow:local" {
            continue;
        }
        let (source, target) =
            mount(svc).unwrap_or_else(|| panic!("{name}: no settings file mounted"));
        assert_eq!(
            Path::new(&source),
            root().join("deploy/compose/onceflow.toml"),
            "{name}"
        );
        assert_eq!(
            svc["environment"]["ONCEFLOW_CONFIG"].as_str(),
            Some(target.as_str()),
            "{name}"
        );
        for secret in &env_secrets {
            assert!(
                svc["environment"][*secret].is_string(),
                "{name}: {secret} is not set"
            );
        }
        let command = strings(&svc["command"]);
        let verb = command[0].as_str();
        let expected_port = match verb {
            "topics" => {
                assert_eq!(command, ["topics", "create"]);
                None
            }
            "ingest" => {
                assert_eq!(
                    svc["ports"][0]["target"].as_u64(),
                    Some(u64::from(s.ingest.listen.port()))
                );
                Some(s.ingest.listen.port())
            }
            "console" => {
                assert_eq!(
                    svc["ports"][0]["target"].as_u64(),
                    Some(u64::from(s.console.listen.port()))
                );
                Some(s.console.listen.port())
            }
            "process" | "deliver" => {
                let adapter = flag(&command, "--adapter").unwrap();
                assert_eq!(name, &format!("{verb}-{adapter}"));
                assert!(
                    s.adapters.contains_key(adapter),
                    "{name}: adapter {adapter} is not configured"
                );
                assert!(
                    flag(&command, "--instance").is_some_and(|i| !i.is_empty()),
                    "{name}"
                );
                Some(if verb == "process" {
                    port(s.processor.metrics_listen)
                } else {
                    port(s.dispatcher.metrics_listen)
                })
            }
            other => panic!("{name}: unknown verb {other}"),
        };
        if let Some(p) = expected_port {
            let test = strings(&svc["healthcheck"]["test"]);
            assert_eq!(&test[..3], ["CMD", "onceflow", "probe"], "{name}");
            let url = &test[3];
            assert_eq!(
                authority(url),
                format!("127.0.0.1:{p}"),
                "{name}: probe {url}"
            );
            assert!(
                url.ends_with("/readyz") || url.ends_with("/healthz"),
                "{name}: probe {url}"
            );
            probed.insert(name.clone(), url.clone());
        }
    }
    assert_eq!(probed.len(), 2 + 2 * s.adapters.len(), "{probed:?}");

    // The Redpanda addresses the settings use are the ones Redpanda listens on, as the compose
    // network names it.
    let redpanda = strings(&services["redpanda"]["command"]);
    let arg = |f: &str| {
        flag(&redpanda, f)
            .unwrap_or_else(|| panic!("redpanda has no {f}"))
            .to_string()
    };
    assert_eq!(
        arg("--advertise-kafka-addr"),
        format!("PLAINTEXT://{}", s.kafka.bootstrap_servers)
    );
    let (host, kafka_port) = s.kafka.bootstrap_servers.split_once(':').unwrap();
    assert_eq!(host, "redpanda");
    assert!(arg("--kafka-addr").ends_with(&format!(":{kafka_port}")));
    let registry = authority(&s.registry.url);
    assert_eq!(registry.split(':').next(), Some("redpanda"));
    assert!(
        arg("--schema-registry-addr")
            .ends_with(&format!(":{}", registry.split(':').nth(1).unwrap()))
    );
    assert!(
        s.topics.replication_factor == 1,
        "a single Redpanda node holds one replica"
    );

    // Providers: the sandbox service, on the port it listens on.
    let sandbox = strings(&services["sandbox"]["command"]);
    let sandbox_port = flag(&sandbox, "--listen")
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    for (name, a) in &s.adapters {
        let url = a
            .base_url
            .as_deref()
            .unwrap_or_else(|| panic!("{name}: no base_url"));
        assert_eq!(authority(url), format!("sandbox:{sandbox_port}"), "{name}");
    }
    // The console reads each dispatcher's breaker from its metrics endpoint.
    let console_targets: BTreeSet<String> = s
        .console
        .metrics
        .iter()
        .map(|u| authority(u).to_string())
        .collect();
    let dispatchers: BTreeSet<String> = s
        .adapters
        .keys()
        .map(|a| format!("deliver-{a}:{}", port(s.dispatcher.metrics_listen)))
        .collect();
    assert_eq!(console_targets, dispatchers);

    // Prometheus scrapes every role's metrics listener, by service name.
    let prom: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join("deploy/observability/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let mut targets = BTreeSet::new();
    for job in prom["scrape_configs"].as_sequence().unwrap() {
        for sc in job["static_configs"].as_sequence().unwrap() {
            for t in sc["targets"].as_sequence().unwrap() {
                targets.insert(t.as_str().unwrap().to_string());
            }
        }
    }
    let mut want = dispatchers.clone();
    want.extend(
        s.adapters
            .keys()
            .map(|a| format!("process-{a}:{}", port(s.processor.metrics_listen))),
    );
    want.insert(format!("ingest:{}", s.ingest.metrics_listen.port()));
    want.insert("localhost:9090".into());
    assert_eq!(targets, want);
}
