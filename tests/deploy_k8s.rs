//! deploy/k8s through `kustomize build` (Go module) and `kubernetes-validate --strict` (PyPI, with
//! Kubernetes' schemas, offline), and each workload against the binary: every StatefulSet's
//! `--instance` is its pod's name, its probes and ports are the ones the role serves per the
//! mounted settings, its grace period exceeds the role's shutdown timeout; secrets are files of the
//! Secret where the settings look for them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod deploy_tools;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use deploy_tools::{STAGES, flag, load, root, run};
use onceflow::config::SecretRef;

fn kustomize(overlay: &str) -> Vec<serde_norway::Value> {
    let yaml = run("kustomize", &["build", overlay], root());
    let path = std::env::temp_dir().join(format!("onceflow-k8s-{}.yaml", std::process::id()));
    std::fs::write(&path, &yaml).unwrap();
    let report = run(
        "kubernetes-validate",
        &["--strict", "--quiet", path.to_str().unwrap()],
        root(),
    );
    assert!(!report.contains("ERROR"), "{report}");
    std::fs::remove_file(&path).ok();
    serde_norway::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn get<'a>(v: &'a serde_norway::Value, path: &str) -> &'a serde_norway::Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn s_(v: &serde_norway::Value, path: &str) -> String {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
        .to_string()
}

#[test]
fn kubernetes_manifests_build_validate_and_match_the_binary() {
    let docs = kustomize("deploy/k8s/overlays/example");
    let s = load("deploy/k8s/base/onceflow.toml");
    let of = |kind: &str| -> Vec<&serde_norway::Value> {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    };

    // The ConfigMap carries exactly the settings file loaded above.
    let config_maps = of("ConfigMap");
    assert_eq!(config_maps.len(), 1);
    let toml = get(config_maps[0], "data")["onceflow.toml"]
        .as_str()
        .unwrap();
    assert_eq!(
        toml,
        std::fs::read_to_string(root().join("deploy/k8s/base/onceflow.toml")).unwrap()
    );
    let config_name = s_(config_maps[0], "metadata.name");
    let secrets = of("Secret");
    assert_eq!(secrets.len(), 1);
    let secret_name = s_(secrets[0], "metadata.name");
    let secret_keys: BTreeSet<String> = get(secrets[0], "data")
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();

    // Every secret the settings name is a file of that Secret, where the pods mount it.
    let mut files: Vec<&Path> = Vec::new();
    for a in s.adapters.values() {
        match &a.credentials {
            Some(SecretRef::File(p)) => files.push(p),
            other => panic!("Kubernetes secrets come from files, not {other:?}"),
        }
    }
    for src in s.ingest.sources.values() {
        match &src.secret {
            SecretRef::File(p) => files.push(p),
            other => panic!("Kubernetes secrets come from files, not {other:?}"),
        }
    }

    let pod_checks = |name: &str, spec: &serde_norway::Value, ops_port: Option<u16>| {
        let c = get(spec, "containers.0");
        let mut mounts = BTreeMap::new();
        for m in c["volumeMounts"].as_sequence().unwrap() {
            mounts.insert(s_(m, "name"), s_(m, "mountPath"));
        }
        for v in spec["volumes"].as_sequence().unwrap() {
            let vname = s_(v, "name");
            if let Some(cm) = get(v, "configMap.name").as_str() {
                assert_eq!(cm, config_name, "{name}");
                let at = Path::new(&mounts[&vname]).join("onceflow.toml");
                let env = c["env"].as_sequence().unwrap();
                let config = env.iter().find(|e| e["name"] == "ONCEFLOW_CONFIG").unwrap();
                assert_eq!(Path::new(&s_(config, "value")), at, "{name}");
            }
            if let Some(sec) = get(v, "secret.secretName").as_str() {
                assert_eq!(sec, secret_name, "{name}");
                for f in &files {
                    let rel = f.strip_prefix(&mounts[&vname]).unwrap_or_else(|_| {
                        panic!("{name}: {} is not under the secret mount", f.display())
                    });
                    assert!(
                        secret_keys.contains(rel.to_str().unwrap()),
                        "{name}: no key {}",
                        rel.display()
                    );
                }
            }
        }
        assert!(
            get(c, "resources.requests.cpu").is_string(),
            "{name}: no CPU request"
        );
        assert!(
            get(c, "resources.requests.memory").is_string(),
            "{name}: no memory request"
        );
        assert!(
            get(c, "resources.limits.memory").is_string(),
            "{name}: no memory limit"
        );
        assert_eq!(
            get(spec, "securityContext.runAsNonRoot").as_bool(),
            Some(true),
            "{name}"
        );
        if let Some(p) = ops_port {
            let ports = c["ports"].as_sequence().unwrap();
            let ops = ports.iter().find(|p| p["name"] == "ops").unwrap();
            assert_eq!(
                get(ops, "containerPort").as_u64(),
                Some(u64::from(p)),
                "{name}"
            );
            assert_eq!(s_(c, "livenessProbe.httpGet.path"), "/healthz", "{name}");
            assert_eq!(s_(c, "livenessProbe.httpGet.port"), "ops", "{name}");
        }
    };

    // One StatefulSet per stage and adapter, each pod's name its --instance.
    let services: BTreeMap<String, &serde_norway::Value> = of("Service")
        .into_iter()
        .map(|v| (s_(v, "metadata.name"), v))
        .collect();
    let mut seen = BTreeSet::new();
    for sts in of("StatefulSet") {
        let name = s_(sts, "metadata.name");
        let spec = get(sts, "spec.template.spec");
        let c = get(spec, "containers.0");
        let args: Vec<String> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let verb = args[0].as_str();
        let adapter = flag(&args, "--adapter").unwrap();
        assert_eq!(name, format!("{verb}-{adapter}"));
        assert!(
            s.adapters.contains_key(adapter),
            "{name}: {adapter} is not configured"
        );
        assert_eq!(flag(&args, "--instance"), Some("$(POD_NAME)"), "{name}");
        let env = c["env"].as_sequence().unwrap();
        let pod_name = env
            .iter()
            .find(|e| e["name"] == "POD_NAME")
            .expect("POD_NAME");
        assert_eq!(
            s_(pod_name, "valueFrom.fieldRef.fieldPath"),
            "metadata.name",
            "{name}"
        );
        let (listen, shutdown) = match verb {
            "process" => (s.processor.metrics_listen, s.processor.shutdown_timeout),
            "deliver" => (s.dispatcher.metrics_listen, s.dispatcher.shutdown_timeout),
            other => panic!("{name}: verb {other}"),
        };
        let listen = listen.expect("metrics_listen set");
        assert!(
            listen.ip().is_unspecified(),
            "{name}: {listen} is not reachable from the kubelet"
        );
        pod_checks(&name, spec, Some(listen.port()));
        assert_eq!(s_(c, "readinessProbe.httpGet.path"), "/readyz", "{name}");
        assert_eq!(s_(c, "readinessProbe.httpGet.port"), "ops", "{name}");
        let grace = get(spec, "terminationGracePeriodSeconds").as_u64().unwrap();
        assert!(
            grace > shutdown.as_secs() + 5,
            "{name}: grace {grace}s ≤ shutdown_timeout {shutdown:?}"
        );
        // Its governing Service is headless and selects exactly its pods.
        let svc = services[&s_(sts, "spec.serviceName")];
        assert_eq!(s_(svc, "spec.clusterIP"), "None", "{name}");
        assert_eq!(
            get(svc, "spec.selector"),
            get(sts, "spec.selector.matchLabels"),
            "{name}"
        );
        assert!(
            subset(
                get(sts, "spec.selector.matchLabels"),
                get(sts, "spec.template.metadata.labels")
            ),
            "{name}"
        );
        seen.insert(name);
    }
    let want: BTreeSet<String> = s
        .adapters
        .keys()
        .flat_map(|a| STAGES.map(|v| format!("{v}-{a}")))
        .collect();
    assert_eq!(seen, want);

    // Ingest: Deployment + Service + HPA + PDB, probes on what it serves.
    let deployments = of("Deployment");
    assert_eq!(deployments.len(), 1);
    let ingest = deployments[0];
    let spec = get(ingest, "spec.template.spec");
    pod_checks("ingest", spec, Some(s.ingest.metrics_listen.port()));
    let c = get(spec, "containers.0");
    assert_eq!(c["args"][0].as_str(), Some("ingest"));
    let http = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap();
    assert_eq!(
        get(http, "containerPort").as_u64(),
        Some(u64::from(s.ingest.listen.port()))
    );
    assert_eq!(s_(c, "readinessProbe.httpGet.path"), "/readyz");
    let hpa = of("HorizontalPodAutoscaler");
    assert_eq!(
        s_(hpa[0], "spec.scaleTargetRef.name"),
        s_(ingest, "metadata.name")
    );
    let pdb = of("PodDisruptionBudget");
    assert_eq!(
        get(pdb[0], "spec.selector.matchLabels"),
        get(ingest, "spec.selector.matchLabels")
    );
    assert_eq!(
        get(services["ingest"], "spec.selector"),
        get(ingest, "spec.selector.matchLabels")
    );

    // The topics Job.
    let jobs = of("Job");
    assert_eq!(jobs.len(), 1);
    let args = get(jobs[0], "spec.template.spec.containers.0.args");
    assert_eq!(args.as_sequence().unwrap().len(), 2);
    assert_eq!(
        (args[0].as_str(), args[1].as_str()),
        (Some("topics"), Some("create"))
    );
}

/// Whether every pair of label map `a` is in `b`.
fn subset(a: &serde_norway::Value, b: &serde_norway::Value) -> bool {
    let b = b.as_mapping().unwrap();
    a.as_mapping()
        .unwrap()
        .iter()
        .all(|(k, v)| b.get(k) == Some(v))
}
