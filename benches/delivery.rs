//! Delivery benchmark: how long a signed webhook takes to become an effect at its provider, and how
//! many commands one dispatcher delivers per second to a slow provider.
//!
//! Run with `make bench-delivery` (starts the local stack first) or `cargo bench --bench delivery`
//! against a running stack. Knobs: `BENCH_SECONDS` (seconds per rate, default 10), `BENCH_RATES`
//! (events/s, default `500,1000,2000`), `BENCH_COMMANDS` (commands per concurrency level in part
//! 2, default 5000), `BENCH_CONCURRENCY` (levels, default `1,16,64,256`).
//!
//! Part 1, webhook → effect: the real binaries `onceflow ingest`, `onceflow process --adapter crm`
//! and `onceflow deliver --adapter crm` run against the local stack and the CRM sandbox (served in
//! this process, no faults). An open-loop load generator posts signed LeadCaptured webhooks at a
//! fixed rate: request i is due at start + i/rate and is sent then, whether or not earlier ones
//! were answered, and its latency is measured from that scheduled time (so a stall delays every
//! request behind it in the figures instead of silently slowing the sender: no coordinated
//! omission). Latencies go into HDR histograms: intake (scheduled → 202 received) and end to end
//! (scheduled → the sandbox performed the contact upsert, by the sandbox's clock, which is this
//! process's clock).
//!
//! Part 2, dispatcher throughput: N CRM commands are written to a fresh outbox, the sandbox answers
//! every call after 50 ms, and one `onceflow deliver` instance runs with `dispatcher.concurrency`
//! = C. Throughput is (N - 1) / (last effect − first effect). The baseline is C = 1 in the same
//! run (one call at a time: at most 20 per second); the ratio says how much concurrency hides the
//! provider's latency.
//!
//! `BENCH_WARMUP=RATE,SECONDS` (default `100,3`) is part 1's warm-up before the measured rates:
//! a broker started minutes ago is still compiling its hot paths, and runs against it get faster
//! one after another (bench/DELIVERY.md), so compare settings with a warm-up at the rate measured.
//! `BENCH_PARTS` (default `1,2`) picks the parts; `BENCH_KEEP=1` keeps the processes' logs (their
//! level: `BENCH_RUST_LOG`, default `warn`). The stages' settings come from the environment
//! like any onceflow process's (`ONCEFLOW__PROCESSOR__BATCH_LINGER_MS=5 cargo bench --bench
//! delivery`): the figures are for the settings the spawned processes read.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is the failure

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use onceflow::codec::Codec;
use onceflow::config::Settings;
use onceflow::ingest::signature;
use onceflow::kafka::client::{self, Isolation, StartAt};
use onceflow::kafka::names::{Names, Stage};
use onceflow::model::event::now_ms;
use onceflow::model::identity;
use onceflow_sandbox::{Faults, Provider, Sandbox, SandboxConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

const SECRET: &str = "bench-secret";
const API_KEY: &str = "bench-key";

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}: {v:?}")))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes the settings file of one part: the namespace's topics, the CRM adapter at `sandbox`.
fn config_file(dir: &Path, s: &Settings, sandbox: std::net::SocketAddr, extra: &str) -> PathBuf {
    let path = dir.join(format!("{}.toml", s.namespace));
    std::fs::write(
        &path,
        format!(
            "namespace = '{ns}'\n\
             [kafka]\nbootstrap_servers = '{b}'\n[registry]\nurl = '{r}'\n\
             [topics]\ninputs = ['{input}']\npartitions = {p}\n\
             [adapters.crm]\nbase_url = 'http://{sandbox}/crm'\ncredentials_env = 'BENCH_API_KEY'\n\
             rate_per_second = 100000\nburst = 10000\n\
             [processor]\ninstance_id = 'bench'\n\
             [dispatcher]\ninstance_id = 'bench'\n{extra}\n",
            ns = s.namespace,
            b = s.kafka.bootstrap_servers,
            r = s.registry.url,
            input = s.topics.inputs[0],
            p = s.topics.partitions,
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path, args: &[&str], env: &[(&str, String)], log: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onceflow"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("BENCH_API_KEY", API_KEY)
        .env("BENCH_SOURCE_SECRET", SECRET)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(40);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn percentiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:>6} ms  p95 {:>6} ms  p99 {:>6} ms  max {:>6} ms",
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.95),
        h.value_at_quantile(0.99),
        h.max()
    )
}

/// Waits until the sandbox has an effect for every one of `commands`, or `limit` passes.
async fn await_effects(
    sandbox: &Sandbox,
    commands: &HashMap<String, i64>,
    limit: Duration,
) -> HashMap<String, i64> {
    let deadline = Instant::now() + limit;
    loop {
        let seen: HashMap<String, i64> = sandbox
            .effects(Provider::Crm)
            .into_iter()
            .filter_map(|e| {
                let id = e.command_id?;
                commands.contains_key(&id).then_some((id, e.at_ms))
            })
            .collect();
        if seen.len() >= commands.len() || Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Values seen by the [`Watcher`], each with the time it was seen (epoch ms).
type Seen = Arc<Mutex<Vec<(Vec<u8>, i64)>>>;

/// A `read_committed` reader of the outbox on its own thread: every record's value with the time
/// it became visible here (the processor's transaction committed and the reader fetched it).
struct Watcher {
    seen: Seen,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    fn start(s: &Settings, topic: &str) -> Watcher {
        let consumer: BaseConsumer = client::consumer(
            &s.kafka,
            "bench.outbox-watcher",
            &format!("{}.bench.outbox-watcher", s.namespace),
            Isolation::ReadCommitted,
            StartAt::Earliest,
        )
        .create()
        .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..s.topics.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let (seen, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (into, halt) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let at = now_ms();
                    let value = m.payload().unwrap_or_default().to_vec();
                    into.lock().unwrap().push((value, at));
                }
            }
        });
        Watcher { seen, stop, thread }
    }

    /// Command id → visible-at ms of every record seen since the last call.
    async fn drain(&self, registry: &onceflow::config::RegistrySettings) -> HashMap<String, i64> {
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let codec = onceflow::codec::AvroCodec::new(registry).unwrap();
        let mut out = HashMap::with_capacity(seen.len());
        for (value, at) in seen {
            let decoded = codec.decode(&value).await.unwrap();
            let json = onceflow::model::json_avro::to_json(&decoded.value);
            let id = json["meta"]["command_id"].as_str().unwrap().to_string();
            out.entry(id).or_insert(at);
        }
        out
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

struct Rate {
    rate: usize,
    sent: usize,
    accepted: usize,
    effects: usize,
    intake: Histogram<u64>,
    outbox: Histogram<u64>,
    e2e: Histogram<u64>,
}

/// Latency from each command's scheduled send to its time in `at`.
fn since_scheduled(scheduled: &HashMap<String, i64>, at: &HashMap<String, i64>) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).unwrap();
    for (id, t) in at {
        if let Some(due) = scheduled.get(id) {
            h.record(((t - due).max(1) as u64).min(3_600_000)).unwrap();
        }
    }
    h
}

/// Sends `n` webhooks at `rate`/s open loop; returns (command id → scheduled ms, intake histogram,
/// accepted count).
async fn open_loop(
    base: &str,
    run: &str,
    rate: usize,
    n: usize,
) -> (HashMap<String, i64>, Histogram<u64>, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let intake = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000, 3).unwrap(),
    ));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut scheduled = HashMap::with_capacity(n);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let start_ms = now_ms() + 50;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let offset = Duration::from_secs_f64(i as f64 / rate as f64);
        let due_ms = start_ms + offset.as_millis() as i64;
        let id = format!("{run}-{rate}-{i}");
        let event_id = identity::event_id("bench", &id);
        scheduled.insert(identity::command_id(&event_id, "crm", 0), due_ms);
        tokio::time::sleep_until(start + offset).await;
        let body = json!({"type": "LeadCaptured", "id": id,
            "data": {"email": format!("{id}@bench.example"), "form_id": "bench", "consent_marketing": true}})
        .to_string();
        let (client, url, intake, accepted) = (
            client.clone(),
            base.to_string(),
            intake.clone(),
            accepted.clone(),
        );
        tasks.spawn(async move {
            let t = signature::sign(SECRET.as_bytes(), now_ms() / 1000, body.as_bytes());
            let r = client
                .post(format!("{url}/v1/sources/bench/events"))
                .header("content-type", "application/json")
                .header(signature::HEADER, t)
                .body(body)
                .send()
                .await;
            let took = (now_ms() - due_ms).max(1) as u64;
            if matches!(&r, Ok(r) if r.status().as_u16() == 202) {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                intake.lock().unwrap().record(took.min(600_000)).unwrap();
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let h = intake.lock().unwrap().clone();
    (
        scheduled,
        h,
        accepted.load(std::sync::atomic::Ordering::Relaxed),
    )
}

async fn part1(dir: &Path) -> Vec<Rate> {
    let seconds = env_list("BENCH_SECONDS", "10")[0];
    let rates = env_list("BENCH_RATES", "500,1000,2000");
    let sb = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: API_KEY.into(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let mut s = common::settings();
    s.topics.partitions = 6;
    s.adapters.retain(|k, _| k == "crm");
    common::create_plan(&s).await;
    let (http, metrics) = (free_port(), free_port());
    let config = config_file(
        dir,
        &s,
        sb.addr,
        &format!(
            "[ingest]\nlisten = '127.0.0.1:{http}'\nmetrics_listen = '127.0.0.1:{metrics}'\n\
             [ingest.sources.bench]\nsecret_env = 'BENCH_SOURCE_SECRET'\nrate_per_second = 1000000\nburst = 100000\n"
        ),
    );
    let ingest = spawn(&config, &["ingest"], &[], &dir.join("ingest.log"));
    let process = spawn(
        &config,
        &["process", "--adapter", "crm"],
        &[],
        &dir.join("process.log"),
    );
    let deliver = spawn(
        &config,
        &["deliver", "--adapter", "crm"],
        &[],
        &dir.join("deliver.log"),
    );
    let base = format!("http://127.0.0.1:{http}");
    let ready = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{base}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < ready, "the intake did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let watcher = Watcher::start(&s, &Names::new(&s).outbox("crm"));
    // Warm-up: the groups join, the stores restore, the connections open; at a rate of its own
    // (`BENCH_WARMUP=RATE,SECONDS`), it also warms a freshly started broker's JIT.
    let warmup = env_list("BENCH_WARMUP", "100,3");
    let (warm_rate, warm_n) = (warmup[0], warmup[0] * warmup.get(1).copied().unwrap_or(3));
    let (warm, _, _) = open_loop(&base, "warm", warm_rate, warm_n).await;
    assert_eq!(
        await_effects(&sb.sandbox, &warm, Duration::from_secs(90))
            .await
            .len(),
        warm_n,
        "warm-up"
    );

    watcher.drain(&s.registry).await;

    let mut out = Vec::new();
    for rate in rates {
        let n = rate * seconds;
        let (scheduled, intake, accepted) = open_loop(&base, &s.namespace, rate, n).await;
        let done = await_effects(&sb.sandbox, &scheduled, Duration::from_secs(120)).await;
        let visible = watcher.drain(&s.registry).await;
        out.push(Rate {
            rate,
            sent: n,
            accepted,
            effects: done.len(),
            intake,
            outbox: since_scheduled(&scheduled, &visible),
            e2e: since_scheduled(&scheduled, &done),
        });
    }
    watcher.stop();
    for child in [ingest, process, deliver] {
        stop(child);
    }
    common::cleanup_plan(&s).await;
    out
}

/// One dispatcher with `concurrency` over `n` fresh commands; commands/s by the sandbox's clock.
async fn part2_one(
    dir: &Path,
    sb: &onceflow_sandbox::Running,
    concurrency: usize,
    n: usize,
) -> f64 {
    let mut s = common::settings();
    s.topics.partitions = 6;
    s.adapters.retain(|k, _| k == "crm");
    common::create_plan(&s).await;
    let events: Vec<_> = (0..n)
        .map(|i| {
            common::lead(
                &format!("{}-{i}", s.namespace),
                &format!("{}-{i}@bench.example", s.namespace),
            )
        })
        .collect();
    let commands = common::decide(&s, "crm", &events);
    common::write_outbox(&s, &commands, &[]).await;
    let ids: HashMap<String, i64> = commands
        .iter()
        .map(|c| (c.meta.command_id.clone(), 0))
        .collect();
    let batch = (concurrency * 4).max(200);
    let config = config_file(
        dir,
        &s,
        sb.addr,
        &format!("concurrency = {concurrency}\nbatch_max_records = {batch}\n"),
    );
    let deliver = spawn(
        &config,
        &["deliver", "--adapter", "crm"],
        &[],
        &dir.join(format!("deliver-{concurrency}.log")),
    );
    let done = await_effects(&sb.sandbox, &ids, Duration::from_secs(600)).await;
    let names = Names::new(&s);
    common::await_caught_up(
        &s,
        &names.group("crm", Stage::Deliver),
        &[names.outbox("crm")],
        Duration::from_secs(60),
    )
    .await;
    stop(deliver);
    common::cleanup_plan(&s).await;
    assert_eq!(done.len(), n, "every command delivered");
    let first = done.values().min().copied().unwrap();
    let last = done.values().max().copied().unwrap();
    (n - 1) as f64 / ((last - first).max(1) as f64 / 1_000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = std::env::temp_dir().join(format!("onceflow-bench-delivery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let parts = env_list("BENCH_PARTS", "1,2");
    if parts.contains(&1) {
        print_part1(&part1(&dir).await);
    }
    if parts.contains(&2) {
        part2(&dir).await;
    }
    if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
        println!("logs: {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir).ok();
    }
}

fn print_part1(rates: &[Rate]) {
    println!(
        "part 1: signed webhook → contact upserted at the CRM sandbox (open loop, latency from the scheduled send)"
    );
    let linger = |stage: &str| {
        std::env::var(format!("ONCEFLOW__{stage}__BATCH_LINGER_MS"))
            .map_or("the default".to_string(), |v| format!("{v} ms"))
    };
    println!(
        "  batch linger: processor {}, dispatcher {}",
        linger("PROCESSOR"),
        linger("DISPATCHER")
    );
    println!(
        "{:>6} {:>7} {:>8} {:>7}  {:<7} latency from the scheduled send",
        "ev/s", "sent", "accepted", "effects", ""
    );
    for r in rates {
        let head = format!(
            "{:>6} {:>7} {:>8} {:>7}",
            r.rate, r.sent, r.accepted, r.effects
        );
        println!("{head}  {:<7} {}", "intake", percentiles(&r.intake));
        println!("{:>31}  {:<7} {}", "", "outbox", percentiles(&r.outbox));
        println!("{:>31}  {:<7} {}", "", "effect", percentiles(&r.e2e));
    }
    if let Some(base) = rates.first() {
        for r in &rates[1..] {
            println!(
                "  {} vs {} ev/s: end-to-end p50 {:.2}x, p99 {:.2}x",
                r.rate,
                base.rate,
                r.e2e.value_at_quantile(0.5) as f64 / base.e2e.value_at_quantile(0.5).max(1) as f64,
                r.e2e.value_at_quantile(0.99) as f64
                    / base.e2e.value_at_quantile(0.99).max(1) as f64
            );
        }
    }
}

async fn part2(dir: &Path) {
    println!("\npart 2: one dispatcher instance, provider answering every call after 50 ms");
    let sb = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: API_KEY.into(),
        faults: [(
            Provider::Crm,
            Faults {
                latency_ms: Some((50, 50)),
                ..Faults::default()
            },
        )]
        .into_iter()
        .collect(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let n = env_list("BENCH_COMMANDS", "5000")[0];
    let mut baseline = None;
    for c in env_list("BENCH_CONCURRENCY", "1,16,64,256") {
        // One call at a time is at most 20/s: a smaller run says as much.
        let count = if c == 1 { 100.min(n) } else { n };
        let rate = part2_one(dir, &sb, c, count).await;
        let base = *baseline.get_or_insert(rate);
        println!(
            "  concurrency {c:>4}: {count:>6} commands, {rate:>8.0} commands/s = {:>6.1}x the baseline, {:>5.1} % of the {:.0}/s that {c} calls of 50 ms allow",
            rate / base,
            100.0 * rate / (c as f64 * 20.0),
            c as f64 * 20.0
        );
    }
}
