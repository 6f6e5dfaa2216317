//! Ingest benchmark: what the signed HTTP intake costs on top of the bare producer API.
//!
//! Run with `make bench-ingest` (starts the local stack first) or `cargo bench --bench ingest`
//! against a running stack (Kafka 127.0.0.1:9092, schema registry http://127.0.0.1:8081, or
//! `ONCEFLOW__KAFKA__BOOTSTRAP_SERVERS` / `ONCEFLOW__REGISTRY__URL`). Knobs: `BENCH_EVENTS`
//! (measured events per path, default 20 000), `BENCH_CONCURRENCY` (requests in flight, default
//! 32), `BENCH_WARMUP` (unmeasured events per path first, default 500).
//!
//! In one process, on one tokio multi-thread runtime and one fresh topic (`b<random>.events`, 6
//! partitions, deleted at the end), two paths publish N distinct `LeadCaptured` events each (own
//! id and e-mail, so nothing is a duplicate) with exactly `BENCH_CONCURRENCY` in flight:
//!
//! - `http`: a signed `POST /v1/sources/bench/events` over loopback HTTP/1.1 to the intake served
//!   in-process; per event the server reads the body, verifies the HMAC, takes a rate-limiter
//!   token (never refused: 1 M/s), parses the JSON envelope, builds the event, validates it against
//!   its Avro schema and rules, encodes it and produces it (idempotent, `acks=all`), then answers
//!   202 once the broker acknowledged. Latency is client-side: request start (signing included) →
//!   202 and its body received. Any other status is counted, printed and fails the run.
//! - `producer`: `Producer::publish(&Event)` on the same events built as `Event`s: validation +
//!   Avro encode + produce (`acks=all`) and wait for the acknowledgement. Latency is one `publish`.
//!
//! At the end the partitions' watermarks must add up to exactly the events accepted (warm-ups
//! included; the producers are idempotent), or the run fails.
//!
//! Reading the output: `events/s` is N divided by the wall time of the measured phase; p50, p99
//! and max are exact (nearest-rank on the sorted latencies). The `http/producer` ratios say what
//! the HTTP layer adds: throughput below 1.0 and latency above 1.0 are its cost. Both paths wait
//! for the same broker acknowledgement (`linger.ms=5`, `acks=all`), so on an idle broker that wait
//! dominates the producer figures. Client, server, librdkafka and the broker share the machine's
//! cores, so the figures are relative to each other, not absolute capacity.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is the failure

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use onceflow::config::{SecretRef, Settings, SourceSettings};
use onceflow::ingest::{Producer, http, signature};
use onceflow::kafka::admin::Admin;
use onceflow::kafka::client::{self, Isolation, StartAt};
use onceflow::kafka::names::{Cleanup, TopicSpec};
use onceflow::model::{Event, EventType};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Map, Value as Json, json};

const SOURCE: &str = "bench";
const SECRET: &str = "bench-secret";
const PARTITIONS: i32 = 6;

/// Reads a positive count from the environment.
fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{name}={v:?} is not a positive integer"),
        },
        Err(_) => default,
    }
}

/// Settings for the local stack under a fresh namespace, with the `bench` source.
fn settings() -> Settings {
    let ns = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let bootstrap = std::env::var("ONCEFLOW__KAFKA__BOOTSTRAP_SERVERS")
        .unwrap_or_else(|_| "127.0.0.1:9092".into());
    let registry =
        std::env::var("ONCEFLOW__REGISTRY__URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let toml = format!(
        "namespace = '{ns}'\n\
         [kafka]\nbootstrap_servers = '{bootstrap}'\n\
         [registry]\nurl = '{registry}'\n\
         [topics]\ninputs = ['{ns}.events']\npartitions = {PARTITIONS}\n\
         [ingest]\ntopic = '{ns}.events'\n\
         [adapters.crm]\n"
    );
    let mut settings = Settings::from_toml_str(&toml).expect("bench settings are valid");
    settings.ingest.sources.insert(
        SOURCE.into(),
        SourceSettings {
            secret: SecretRef::Value(SECRET.into()),
            allowed_types: vec![EventType::LeadCaptured],
            rate_per_second: 1_000_000,
            burst: 1_000_000,
            max_body_bytes: 256 * 1024,
        },
    );
    settings
}

/// The `data` of event `i` of `phase`: an e-mail of its own, so entity keys spread over partitions.
fn lead_data(run: &str, phase: &str, i: usize) -> Map<String, Json> {
    let Json::Object(data) = json!({
        "email": format!("lead{i}.{phase}.{run}@bench.example"),
        "form_id": "bench-form",
    }) else {
        unreachable!()
    };
    data
}

fn lead_id(run: &str, phase: &str, i: usize) -> String {
    format!("{run}-{phase}-{i}")
}

/// The JSON envelope the intake takes for event `i` of `phase`.
fn lead_body(run: &str, phase: &str, i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "LeadCaptured",
        "id": lead_id(run, phase, i),
        "occurred_at": jiff::Timestamp::now().to_string(),
        "data": lead_data(run, phase, i),
    }))
    .unwrap()
}

/// One measured phase.
struct Run {
    wall: Duration,
    /// Latency of every successful event, sorted.
    latencies: Vec<Duration>,
    /// Failures by description.
    failures: BTreeMap<String, usize>,
}

/// Runs `op(0..n)` with exactly `concurrency` calls in flight (one task per slot, each taking the
/// next index), timing each call.
async fn drive<F, Fut>(n: usize, concurrency: usize, op: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(n))
        .map(|_| {
            let (op, next) = (Arc::clone(&op), Arc::clone(&next));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(n / concurrency + 1);
                let mut failures = BTreeMap::<String, usize>::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = Instant::now();
                    match op(i).await {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err(e) => *failures.entry(e).or_default() += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut run = Run {
        wall: Duration::ZERO,
        latencies: Vec::with_capacity(n),
        failures: BTreeMap::new(),
    };
    for w in workers {
        let (latencies, failures) = w.await.expect("a bench worker panicked");
        run.latencies.extend(latencies);
        for (e, c) in failures {
            *run.failures.entry(e).or_default() += c;
        }
    }
    run.wall = started.elapsed();
    run.latencies.sort_unstable();
    run
}

/// Nearest-rank percentile of sorted `v`, in milliseconds.
fn pct_ms(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1].as_secs_f64() * 1e3
}

struct Summary {
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
    wall: f64,
}

fn summarize(run: &Run) -> Summary {
    Summary {
        rate: run.latencies.len() as f64 / run.wall.as_secs_f64(),
        p50: pct_ms(&run.latencies, 50.0),
        p99: pct_ms(&run.latencies, 99.0),
        max: pct_ms(&run.latencies, 100.0),
        wall: run.wall.as_secs_f64(),
    }
}

fn report_failures(path: &str, run: &Run) -> usize {
    let total: usize = run.failures.values().sum();
    for (e, c) in &run.failures {
        eprintln!("{path}: {c} × {e}");
    }
    total
}

/// A signed POST of `body` to the intake; `Ok` only on 202.
async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let sig = signature::sign(SECRET.as_bytes(), jiff::Timestamp::now().as_second(), &body);
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(signature::HEADER, sig)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request error: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("status {status}, body unreadable: {e}"))?;
    if status == reqwest::StatusCode::ACCEPTED {
        Ok(())
    } else {
        Err(format!("status {status}: {text}"))
    }
}

async fn http_phase(
    client: &reqwest::Client,
    url: &str,
    run_id: &str,
    phase: &'static str,
    n: usize,
    concurrency: usize,
) -> Run {
    let (client, url, run_id) = (client.clone(), url.to_string(), run_id.to_string());
    drive(n, concurrency, move |i| {
        let body = lead_body(&run_id, phase, i);
        let (client, url) = (client.clone(), url.clone());
        async move { post(&client, &url, body).await }
    })
    .await
}

async fn producer_phase(
    producer: &Arc<Producer>,
    run_id: &str,
    phase: &'static str,
    n: usize,
    concurrency: usize,
) -> Run {
    let (producer, run_id) = (Arc::clone(producer), run_id.to_string());
    drive(n, concurrency, move |i| {
        let producer = Arc::clone(&producer);
        let run_id = run_id.clone();
        async move {
            let event = Event::new(
                EventType::LeadCaptured,
                SOURCE,
                Some(&lead_id(&run_id, phase, i)),
                onceflow::model::event::now_ms(),
                lead_data(&run_id, phase, i),
                None,
            );
            producer
                .publish(&event)
                .await
                .map(|_| ())
                .map_err(|e| format!("publish error: {e}"))
        }
    })
    .await
}

/// Sum of the high watermarks of the ingest topic's partitions.
async fn records_on_topic(settings: &Settings) -> anyhow::Result<i64> {
    let (kafka, topic) = (settings.kafka.clone(), settings.ingest.topic.clone());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client::consumer(
            &kafka,
            "bench.count",
            "bench.count",
            Isolation::ReadCommitted,
            StartAt::Earliest,
        )
        .create()?;
        let timeout = Duration::from_secs(10);
        let mut total = 0;
        for p in 0..PARTITIONS {
            let (low, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
            total += high - low;
        }
        Ok(total)
    })
    .await?
}

/// Both paths, measured; returns the runs or why the bench could not run.
async fn bench(
    settings: &Settings,
    n: usize,
    concurrency: usize,
    warmup: usize,
) -> anyhow::Result<(Run, Run)> {
    let run_id = settings.namespace.clone();

    // The intake, in-process on an ephemeral port.
    let router = http::build(settings)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let url = format!(
        "http://{}/v1/sources/{SOURCE}/events",
        listener.local_addr()?
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, router, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;

    eprintln!("http: warm-up {warmup} …");
    let warm = http_phase(&client, &url, &run_id, "http-warm", warmup, concurrency).await;
    if report_failures("http warm-up", &warm) > 0 {
        anyhow::bail!("the intake refused warm-up requests");
    }
    eprintln!("http: {n} events, {concurrency} in flight …");
    let http_run = http_phase(&client, &url, &run_id, "http", n, concurrency).await;
    drop(client);
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(r) => r??,
        Err(_) => eprintln!("http: the intake did not stop within 10 s; going on"),
    }

    let producer = Arc::new(Producer::new(settings)?);
    eprintln!("producer: warm-up {warmup} …");
    let warm = producer_phase(&producer, &run_id, "prod-warm", warmup, concurrency).await;
    if report_failures("producer warm-up", &warm) > 0 {
        anyhow::bail!("the producer failed warm-up events");
    }
    eprintln!("producer: {n} events, {concurrency} in flight …");
    let producer_run = producer_phase(&producer, &run_id, "prod", n, concurrency).await;

    // Idempotent producers: every accepted event is exactly one record on the topic.
    let accepted = 2 * warmup + http_run.latencies.len() + producer_run.latencies.len();
    let on_topic = records_on_topic(settings).await?;
    eprintln!("records on the topic: {on_topic} (accepted {accepted})");
    anyhow::ensure!(
        on_topic == accepted as i64,
        "{on_topic} records on the topic, {accepted} accepted"
    );
    Ok((http_run, producer_run))
}

fn print_table(topic: &str, n: usize, concurrency: usize, warmup: usize, h: &Run, p: &Run) {
    let (hs, ps) = (summarize(h), summarize(p));
    println!();
    println!(
        "ingest bench: N={n} per path, concurrency {concurrency}, warm-up {warmup}, topic {topic} \
         ({PARTITIONS} partitions), {} cores",
        std::thread::available_parallelism().map_or(0, |c| c.get())
    );
    println!(
        "{:<9} {:>10} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "path", "events/s", "p50 ms", "p99 ms", "max ms", "wall s", "failed"
    );
    for (name, s, run) in [("http", &hs, h), ("producer", &ps, p)] {
        println!(
            "{name:<9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>8.2} {:>7}",
            s.rate,
            s.p50,
            s.p99,
            s.max,
            s.wall,
            run.failures.values().sum::<usize>()
        );
    }
    println!(
        "http/producer: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        hs.rate / ps.rate,
        hs.p50 / ps.p50,
        hs.p99 / ps.p99
    );
    println!(
        "  http:     sign + loopback HTTP/1.1 POST; body read + HMAC verify + rate-limit token + \
         JSON parse + JSON→Avro validation + encode + produce (acks=all) and wait; 202 JSON answer"
    );
    println!(
        "  producer: Event::new + validation + encode + produce (acks=all) and wait for the ack"
    );
}

fn main() {
    let n = env_count("BENCH_EVENTS", 20_000);
    let concurrency = env_count("BENCH_CONCURRENCY", 32);
    let warmup = env_count("BENCH_WARMUP", 500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let settings = settings();
    let topic = settings.ingest.topic.clone();
    let outcome = runtime.block_on(async {
        let admin = Admin::new(&settings.kafka)?;
        admin
            .create(&[TopicSpec {
                name: topic.clone(),
                partitions: PARTITIONS,
                replication_factor: 1,
                cleanup: Cleanup::Delete(None),
            }])
            .await?;
        let result = bench(&settings, n, concurrency, warmup).await;
        if let Err(e) = admin.delete(&[&topic]).await {
            eprintln!("could not delete topic {topic}: {e}");
        }
        result
    });
    let (http_run, producer_run) = match outcome {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("ingest bench failed: {e:#}");
            std::process::exit(1);
        }
    };
    print_table(&topic, n, concurrency, warmup, &http_run, &producer_run);
    let failed = report_failures("http", &http_run) + report_failures("producer", &producer_run);
    if failed > 0 {
        eprintln!("ingest bench failed: {failed} events were not accepted");
        std::process::exit(1);
    }
}
