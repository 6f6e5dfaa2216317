//! The infrastructure the chaos run breaks: the local stack's three-broker cluster (through
//! `deploy/local/stack`), who leads a partition and who coordinates a transaction at a given
//! moment, and a schema registry of the run's own.
//!
//! The registry is the stack's AxonOps binary on a port of its own, over a database of its own
//! (`schema_registry_chaos`) in the stack's PostgreSQL: restarting it proves that schema ids live
//! in PostgreSQL, and never disturbs the registry on :8081 that the other tests share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use onceflow::config::Settings;
use onceflow::kafka::client::{self, Isolation, StartAt};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_stack(args: &[&str]) -> Output {
    Command::new(root().join("deploy/local/stack"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("deploy/local/stack runs")
}

/// Runs `deploy/local/stack ARGS`; its stdout, or what went wrong.
pub fn stack(args: &[&str]) -> Result<String, String> {
    let out = run_stack(args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "stack {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts the three-broker cluster (and PostgreSQL, which the run's registry uses); its bootstrap
/// list, from `stack env --brokers 3`.
pub fn cluster_up() -> String {
    stack(&["up", "--brokers", "3"]).unwrap_or_else(|e| panic!("{e}"));
    let env: BTreeMap<String, String> = stack(&["env", "--brokers", "3"])
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bootstrap = env
        .get("ONCEFLOW__KAFKA__BOOTSTRAP_SERVERS")
        .expect("stack env --brokers 3 prints the bootstrap override")
        .clone();
    assert_eq!(
        env.get("ONCEFLOW__TOPICS__REPLICATION_FACTOR")
            .map(String::as_str),
        Some("3"),
        "the cluster's replication factor"
    );
    bootstrap
}

/// Stops the three brokers (never the single broker nor the shared registry).
pub fn cluster_down() {
    if let Err(e) = stack(&["down", "--brokers", "3"]) {
        eprintln!("{e}");
    }
}

/// A metadata reader on the cluster.
pub fn meta_client(s: &Settings) -> BaseConsumer {
    client::consumer(
        &s.kafka,
        "chaos.meta",
        "chaos.meta",
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()
    .expect("a metadata client")
}

/// Per partition of `topic`: (leader, in-sync replicas).
pub fn layout(c: &BaseConsumer, topic: &str) -> Result<BTreeMap<i32, (i32, Vec<i32>)>, String> {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let t = md.topics().first().ok_or("no topic in the metadata")?;
    Ok(t.partitions()
        .iter()
        .map(|p| (p.id(), (p.leader(), p.isr().to_vec())))
        .collect())
}

/// The broker leading partition `partition` of `topic` now.
pub fn leader(c: &BaseConsumer, topic: &str, partition: i32) -> Result<i32, String> {
    let l = layout(c, topic)?;
    match l.get(&partition) {
        Some((leader, _)) if *leader > 0 => Ok(*leader),
        other => Err(format!("{topic}-{partition} has no leader: {other:?}")),
    }
}

/// Waits (at most `limit`) until every partition of `topics` has all three brokers in sync, so
/// that the next broker fault is a single failure, never a second one on top.
pub fn await_full_isr(c: &BaseConsumer, topics: &[String], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let full = topics.iter().all(|t| {
            layout(c, t).is_ok_and(|l| {
                l.values()
                    .all(|(leader, isr)| *leader > 0 && isr.len() == 3)
            })
        });
        if full {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The broker coordinating `transactional_id`, from `kafka-transactions describe`.
pub fn coordinator(bootstrap: &str, transactional_id: &str) -> Result<i32, String> {
    let out = stack(&[
        "tool",
        "kafka-transactions",
        "--bootstrap-server",
        bootstrap,
        "describe",
        "--transactional-id",
        transactional_id,
    ])?;
    out.lines()
        .find(|l| l.contains(transactional_id))
        .and_then(|row| row.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no coordinator row for {transactional_id}:\n{out}"))
}

/// The run's own schema registry process.
pub struct Registry {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

const REGISTRY_DB: &str = "schema_registry_chaos";

fn pg_bin(name: &str) -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().ok_or(format!("no PostgreSQL {name}"))
}

impl Registry {
    /// Creates the run's database if it is missing, writes the registry's settings (port `port`)
    /// into `dir` and starts it.
    pub fn start(dir: &Path, port: u16) -> Result<Registry, String> {
        let exists = Command::new(pg_bin("psql")?)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "54329",
                "-U",
                "onceflow",
                "-d",
                "postgres",
            ])
            .args([
                "-tAc",
                &format!("SELECT 1 FROM pg_database WHERE datname = '{REGISTRY_DB}'"),
            ])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !String::from_utf8_lossy(&exists.stdout).contains('1') {
            let made = Command::new(pg_bin("createdb")?)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    "54329",
                    "-U",
                    "onceflow",
                    REGISTRY_DB,
                ])
                .status()
                .map_err(|e| format!("createdb: {e}"))?;
            if !made.success() {
                return Err(format!("createdb {REGISTRY_DB}: {made}"));
            }
        }
        let template = std::fs::read_to_string(root().join("deploy/local/schema-registry.yaml"))
            .map_err(|e| format!("schema-registry.yaml: {e}"))?;
        let yaml = template
            .replace("port: 8081", &format!("port: {port}"))
            .replace("\"schema_registry\"", &format!("\"{REGISTRY_DB}\""));
        if !yaml.contains(&format!("port: {port}")) || !yaml.contains(REGISTRY_DB) {
            return Err(
                "schema-registry.yaml no longer has the expected port/database lines".into(),
            );
        }
        let config = dir.join("schema-registry.yaml");
        std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
        let mut r = Registry {
            url: format!("http://127.0.0.1:{port}"),
            config,
            log: dir.join("schema-registry.log"),
            child: None,
            starts: 0,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = root().join("deploy/local/.cache/bin/schema-registry");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-config").arg(&self.config);
        for (k, _) in std::env::vars() {
            if k.starts_with("SCHEMA_REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/subjects", self.url);
        loop {
            let ok = probe::get_status(&url) == Some(200);
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("the registry did not answer {url} within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs the registry (a crash), waits `down`, starts it again on the same database.
    pub fn restart(&mut self, down: Duration) -> Result<(), String> {
        self.stop();
        std::thread::sleep(down);
        self.spawn()
    }

    /// Stops it (SIGKILL: PostgreSQL holds everything it acknowledged).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tiny blocking HTTP GET for the registry's readiness (no async runtime on the fault thread).
mod probe {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// The status of `GET url` (`http://host:port/path`), or None when nothing answers.
    pub fn get_status(url: &str) -> Option<u16> {
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = TcpStream::connect(host).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        head.split_whitespace().nth(1)?.parse().ok()
    }
}
