//! The chaos harness (issue 5/6, item 3), shared by `cargo bench --bench chaos` (`make chaos`,
//! the long run) and `tests/chaos.rs` (the short run in `make test`).
//!
//! On the local stack's three-broker cluster, with the real binaries: signed webhooks at a
//! steady rate through `onceflow ingest` → `onceflow process` → `onceflow deliver` → the provider
//! sandboxes (crm: upsert by e-mail; billing: Stripe-style `Idempotency-Key`; analytics: Segment
//! `messageId`), while processors and dispatchers are SIGKILLed at random, the partition leader
//! and the transaction coordinator are SIGKILLed and restarted, one broker is SIGSTOPped past
//! the session time-out, and the registry is SIGKILLed and restarted (see [`faults`]). The
//! sandboxes throttle (429), fail (5xx), reset connections and lose answers after the effect.
//! At the end, once every group has caught up, [`tally`] counts what is where and the run fails
//! on any loss or duplicate.
//!
//! Knobs (environment): `CHAOS_EVENTS`, `CHAOS_RATE` (events/s), `CHAOS_FAULT_EVERY_S` (between
//! infrastructure faults), `CHAOS_KILL_EVERY_S` (mean between stage SIGKILLs, 0: none),
//! `CHAOS_PAUSE_S` (SIGSTOP length, default 12), `CHAOS_BROKER_DOWN_S` (default 5),
//! `CHAOS_PARTITIONS` (default 6), `CHAOS_DRAIN_S` (catch-up limit, default 900),
//! `CHAOS_STALL_S` (a group's lag unchanged this long: its stage is wedged, default 120),
//! `CHAOS_P429` (probability of a provider's random 429 with `Retry-After: 1`, default 0.01),
//! `CHAOS_DISPATCH_BATCH` (the dispatchers' `batch_max_records`, default 200), `CHAOS_LOG` (the stages' `RUST_LOG`, default `onceflow=warn`; a wedged stage's metrics and
//! thread stacks are kept beside its log), `CHAOS_KEEP_CLUSTER=1` (leave the cluster up),
//! `CHAOS_ONCEFLOW_BIN` (another onceflow binary), and to prove the checks can fail, `CHAOS_MUTATE`: `phantom` (the sender counts every 500th
//! event accepted without sending it: losses), `expire_keys` (the sandbox clock jumps 25 h every
//! second, so the providers forget idempotency keys and message ids: duplicate effects).

pub mod cluster;
pub mod faults;
pub mod fleet;
pub mod sender;
pub mod tally;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceflow::config::Settings;
use onceflow::kafka::names::{Names, Stage};
use onceflow_sandbox::{Faults, Provider, Sandbox, SandboxConfig};

/// The adapters of the run: providers that honour keys.
pub const ADAPTERS: [&str; 3] = ["crm", "billing", "analytics"];
const TIERS_MS: [u64; 3] = [500, 2_000, 5_000];

/// The run's knobs.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Events to send.
    pub events: usize,
    /// Events per second.
    pub rate: f64,
    /// Seconds between infrastructure faults.
    pub fault_every: f64,
    /// Mean seconds between stage SIGKILLs.
    pub kill_every: f64,
    /// SIGSTOP length.
    pub pause: Duration,
    /// How long a killed broker stays down.
    pub broker_down: Duration,
    /// Partitions per topic.
    pub partitions: i32,
    /// Catch-up limit after the last event.
    pub drain: Duration,
    /// A group whose lag does not move for this long has a wedged stage.
    pub stall: Duration,
    /// `CHAOS_MUTATE`.
    pub mutate: String,
    /// Probability that a provider answers a call with a 429 (`Retry-After: 1`).
    pub p_429: f64,
    /// The dispatchers' `batch_max_records`.
    pub dispatch_batch: usize,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Knobs {
    /// The knobs from the environment, with these defaults.
    pub fn from_env(events: usize, rate: f64, fault_every: f64, kill_every: f64) -> Knobs {
        Knobs {
            events: env("CHAOS_EVENTS", events),
            rate: env("CHAOS_RATE", rate),
            fault_every: env("CHAOS_FAULT_EVERY_S", fault_every),
            kill_every: env("CHAOS_KILL_EVERY_S", kill_every),
            pause: Duration::from_secs_f64(env("CHAOS_PAUSE_S", 12.0)),
            broker_down: Duration::from_secs_f64(env("CHAOS_BROKER_DOWN_S", 5.0)),
            partitions: env("CHAOS_PARTITIONS", 6),
            drain: Duration::from_secs_f64(env("CHAOS_DRAIN_S", 900.0)),
            stall: Duration::from_secs_f64(env("CHAOS_STALL_S", 120.0)),
            mutate: std::env::var("CHAOS_MUTATE").unwrap_or_default(),
            p_429: env("CHAOS_P429", 0.01),
            dispatch_batch: env("CHAOS_DISPATCH_BATCH", 200),
        }
    }
}

/// What a run found.
pub struct Report {
    /// The printed report.
    pub text: String,
    /// No loss, no duplicate, every fault kind done.
    pub clean: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Faults of a provider on a moderately bad day; a random 429 with probability `p_429`.
fn moderate(p_429: f64) -> Faults {
    Faults {
        p_429,
        retry_after_s: 1,
        p_5xx: 0.02,
        p_reset: 0.003,
        p_timeout_after_effect: 0.002,
        hang_ms: 2_500,
        latency_ms: Some((1, 10)),
        ..Faults::default()
    }
}

/// The settings file of the binaries, and the same settings in this process.
fn settings(
    ns: &str,
    bootstrap: &str,
    registry: &str,
    k: &Knobs,
    sandbox: &str,
) -> (String, Settings) {
    let tiers = format!("{TIERS_MS:?}");
    let base = format!(
        "namespace = '{ns}'\n\
         [kafka]\nbootstrap_servers = '{bootstrap}'\ntransaction_timeout_ms = 30000\n\
         message_timeout_ms = 25000\nsession_timeout_ms = 10000\n\
         [registry]\nurl = '{registry}'\n\
         [topics]\ninputs = ['{ns}.events']\npartitions = {p}\nreplication_factor = 3\n\
         [retry]\ntiers_ms = {tiers}\n",
        p = k.partitions
    );
    let mut adapters = String::new();
    for a in ADAPTERS {
        adapters += &format!(
            "[adapters.{a}]\nbase_url = 'http://{sandbox}/{a}'\ncredentials_env = 'CHAOS_API_KEY'\n\
             rate_per_second = 100000\nburst = 10000\nin_doubt = 'resend'\n"
        );
    }
    let s = Settings::from_toml_str(&format!("{base}{adapters}")).expect("valid chaos settings");
    let file = format!(
        "{base}{adapters}\
         [ingest]\nlisten = '127.0.0.1:{http}'\nmetrics_listen = '127.0.0.1:{metrics}'\n\
         [ingest.sources.{src}]\nsecret_env = 'CHAOS_SOURCE_SECRET'\nrate_per_second = 1000000\nburst = 100000\n\
         [processor]\nstatic_membership = true\n\
         [dispatcher]\nstatic_membership = true\nrequest_timeout_ms = 2000\nconnect_timeout_ms = 500\nmax_wait_ms = 3000\n\
         batch_max_records = {batch}\n",
        batch = k.dispatch_batch,
        http = free_port(),
        metrics = free_port(),
        src = fleet::SOURCE,
    );
    (file, s)
}

fn ingest_url(file: &str) -> String {
    let listen = file
        .lines()
        .find_map(|l| l.strip_prefix("listen = '"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("the ingest listen line");
    format!("http://{listen}")
}

/// Waits until every group of the run has committed everything in its inputs (twice in a row,
/// 2 s apart), or `limit` passes; the lags seen last. A group whose lag stays above 0 and
/// unchanged for `stall` has a wedged stage (alive, maybe even ready, but not consuming): its
/// process is SIGKILLed and started again, noted in the fault log as a stall (which fails the
/// run: it is a bug), and the drain goes on so that the accounting still happens.
async fn drain(
    s: &Settings,
    limit: Duration,
    stall: Duration,
    chaos: &faults::Chaos,
) -> Vec<(String, i64)> {
    let names = Names::new(s);
    let mut groups = Vec::new();
    for a in ADAPTERS {
        let mut process = s.topics.inputs.clone();
        let mut deliver = vec![names.outbox(a)];
        for n in 1..=TIERS_MS.len() {
            process.push(names.retry(a, Stage::Process, n));
            deliver.push(names.retry(a, Stage::Deliver, n));
        }
        groups.push((
            names.group(a, Stage::Process),
            process,
            format!("process:{a}"),
        ));
        groups.push((
            names.group(a, Stage::Deliver),
            deliver,
            format!("deliver:{a}"),
        ));
    }
    let deadline = Instant::now() + limit;
    let mut zero_rounds = 0;
    let mut since: Vec<(i64, Instant)> = vec![(-2, Instant::now()); groups.len()];
    loop {
        // The stage loop has stopped: a stage that exits now is restarted here.
        chaos.restart_exited();
        let mut lags = Vec::new();
        for (i, (g, topics, proc_name)) in groups.iter().enumerate() {
            let (k, g2, t) = (s.kafka.clone(), g.clone(), topics.clone());
            let lag =
                tokio::task::spawn_blocking(move || onceflow::kafka::admin::group_lag(&k, &g2, &t))
                    .await
                    .expect("lag thread")
                    .unwrap_or_else(|e| {
                        // The 1 M run at this commit's parent ended with every deliver group's
                        // look-up failing for 30 min, the work all done: say why.
                        eprintln!("[chaos] lag of {g}: look-up failed: {e}");
                        -1
                    });
            if lag != since[i].0 {
                since[i] = (lag, Instant::now());
            } else if lag > 0 && since[i].1.elapsed() >= stall {
                chaos.restart_wedged(proc_name, &format!("{g} lag {lag} unchanged for {stall:?}"));
                since[i] = (lag, Instant::now());
            }
            lags.push((g.clone(), lag));
        }
        zero_rounds = if lags.iter().all(|(_, l)| *l == 0) {
            zero_rounds + 1
        } else {
            0
        };
        if zero_rounds >= 2 || Instant::now() >= deadline {
            return lags;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One whole run: cluster up, topics, registry, sandboxes, processes, sending under faults,
/// drain, tally; the cluster goes down at the end unless `CHAOS_KEEP_CLUSTER=1`.
pub async fn run(k: Knobs) -> Report {
    let t_start = Instant::now();
    let bootstrap = tokio::task::spawn_blocking(cluster::cluster_up)
        .await
        .expect("cluster thread");
    let ns = format!("chaos{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dir = std::env::temp_dir().join(format!("onceflow-{ns}"));
    std::fs::create_dir_all(&dir).expect("the run's folder");
    let registry = cluster::Registry::start(&dir, free_port()).unwrap_or_else(|e| panic!("{e}"));
    let sb = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        api_key: fleet::API_KEY.into(),
        faults: ADAPTERS
            .iter()
            .map(|a| (Provider::parse(a).expect("a provider"), moderate(k.p_429)))
            .collect(),
        ..SandboxConfig::default()
    })
    .await
    .expect("the sandboxes start");
    let (file, s) = settings(&ns, &bootstrap, &registry.url, &k, &sb.addr.to_string());
    let config = dir.join("onceflow.toml");
    std::fs::write(&config, &file).expect("the settings file");
    let created = onceflow::ops::topics::create(&s)
        .await
        .expect("topics create");
    assert!(created.diffs.is_empty(), "{:?}", created.diffs);
    let names = Names::new(&s);
    eprintln!(
        "[chaos] namespace {ns}, logs in {}, cluster {bootstrap}, registry {}, sandboxes {}",
        dir.display(),
        registry.url,
        sb.addr
    );

    let fleet = Arc::new(Mutex::new(fleet::Fleet::new(
        &dir, &config, &ADAPTERS, free_port,
    )));
    fleet.lock().expect("fleet").start_all();
    let base = ingest_url(&file);
    let ready = Instant::now() + Duration::from_secs(90);
    while !reqwest::get(format!("{base}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < ready, "the intake did not become ready");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let t0 = Instant::now();
    let chaos = faults::Chaos {
        t0,
        log: Arc::default(),
        fleet: fleet.clone(),
        registry: Arc::new(Mutex::new(registry)),
        bootstrap: bootstrap.clone(),
        settings: s.clone(),
        topics: cluster_topics(&s),
        partitions: k.partitions,
        transactional_ids: ADAPTERS
            .iter()
            .map(|a| names.transactional_id(a, Stage::Process, "chaos-0"))
            .collect(),
        kill_every: k.kill_every,
        fault_every: k.fault_every,
        pause: k.pause,
        broker_down: k.broker_down,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (c1, st1) = (chaos.clone(), stop.clone());
    let stage_loop = std::thread::spawn(move || c1.stages(&st1));
    let (c2, st2) = (chaos.clone(), stop.clone());
    let infra_loop = std::thread::spawn(move || c2.infra(&st2));
    let mutate_stop = Arc::new(AtomicBool::new(false));
    if k.mutate == "expire_keys" {
        let (sandbox, st) = (sb.sandbox.clone(), mutate_stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                sandbox.advance_clock(Duration::from_secs(25 * 3600));
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    }

    let progress = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let (p, st, n) = (progress.clone(), stop.clone(), k.events);
        tokio::spawn(async move {
            let t = Instant::now();
            while !st.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let done = p.load(Ordering::Relaxed);
                eprintln!(
                    "[chaos {:>7.1}s] accepted {done}/{n} ({:.0}/s)",
                    t.elapsed().as_secs_f64(),
                    done as f64 / t.elapsed().as_secs_f64()
                );
            }
        })
    };
    let sent = sender::run(
        sender::Plan {
            run: ns.clone(),
            base,
            events: k.events,
            rate: k.rate,
            max_in_flight: 4_000,
            give_up: Duration::from_secs(600),
            mutate_phantom_every: if k.mutate == "phantom" { 500 } else { 0 },
        },
        progress,
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    let sending_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "[chaos {sending_s:>7.1}s] sender done: {} accepted; waiting for the fault loop",
        sent.accepted.len()
    );
    stop.store(true, Ordering::Relaxed);
    let infra_faults = tokio::task::spawn_blocking(move || infra_loop.join().expect("infra loop"))
        .await
        .expect("join");
    let _ = tokio::task::spawn_blocking(move || stage_loop.join()).await;
    ticker.abort();
    // Every broker back and in sync before the accounting.
    for b in 1..=3 {
        let _ = cluster::stack(&["resume-broker", &b.to_string()]);
    }
    let lags = drain(&s, k.drain, k.stall, &chaos).await;
    let drained_s = t0.elapsed().as_secs_f64();
    mutate_stop.store(true, Ordering::Relaxed);
    fleet
        .lock()
        .expect("fleet")
        .stop_all(Duration::from_secs(40));

    let codec = onceflow::codec::AvroCodec::new(&s.registry).expect("a codec");
    let mut figures = Vec::new();
    for a in ADAPTERS {
        figures.push(tally::adapter(&s, &codec, &sb.sandbox, a, &sent.accepted).await);
    }
    let schedule = chaos.log.lock().expect("fault log").clone();
    let restarts: Vec<String> = fleet
        .lock()
        .expect("fleet")
        .procs
        .iter()
        .map(|p| format!("{} {}", p.name, p.runs))
        .collect();
    let text = report(
        &k, &sent, &figures, &schedule, &lags, &restarts, sending_s, drained_s,
    );
    let kinds_done = infra_faults >= 4;
    let clean = figures.iter().all(tally::Figures::clean)
        && lags.iter().all(|(_, l)| *l == 0)
        && sent.given_up.is_empty()
        && sent.id_mismatch == 0
        && kinds_done
        && !schedule.iter().any(|f| {
            [faults::WEDGED, faults::BROKER_LOST, faults::SUPERSEDED].contains(&f.what.as_str())
        });
    drop(chaos);
    if std::env::var("CHAOS_KEEP_CLUSTER").as_deref() != Ok("1") {
        if clean {
            // The records of a long run take gigabytes; a failed run keeps them to look at.
            let plan: Vec<String> = onceflow::kafka::names::topic_plan(&s)
                .into_iter()
                .map(|t| t.name)
                .collect();
            let refs: Vec<&str> = plan.iter().map(String::as_str).collect();
            if let Ok(admin) = onceflow::kafka::admin::Admin::new(&s.kafka) {
                let _ = admin.delete(&refs).await;
            }
        }
        tokio::task::spawn_blocking(cluster::cluster_down)
            .await
            .expect("cluster thread");
    }
    eprintln!("[chaos] whole run {:.0} s", t_start.elapsed().as_secs_f64());
    if clean {
        std::fs::remove_dir_all(&dir).ok();
    }
    Report { text, clean }
}

/// `events` first, then the other topics a broker fault must find fully in sync.
fn cluster_topics(s: &Settings) -> Vec<String> {
    let names = Names::new(s);
    let mut t = s.topics.inputs.clone();
    for a in ADAPTERS {
        t.push(names.outbox(a));
        t.push(names.dedupe(a));
        t.push(names.ledger(a));
    }
    t
}

#[allow(clippy::too_many_arguments)]
fn report(
    k: &Knobs,
    sent: &sender::Sent,
    figures: &[tally::Figures],
    schedule: &[faults::Fault],
    lags: &[(String, i64)],
    restarts: &[String],
    sending_s: f64,
    drained_s: f64,
) -> String {
    let mut out = String::from("\n== fault schedule (seconds since the first event)\n");
    for f in schedule {
        out += &format!("{:>8.1}  {:<22} {}\n", f.at_s, f.what, f.target);
    }
    let count = |w: &str| schedule.iter().filter(|f| f.what == w).count();
    out += &format!(
        "faults: {} stage SIGKILLs, {} leader kills, {} coordinator kills, {} broker pauses, {} registry restarts; {} stages exited by themselves, {} stopped as superseded (none ran twice), {} wedged (restarted by the harness), {} brokers lost; starts per process: {}\n",
        count("SIGKILL stage"),
        count("SIGKILL leader"),
        count("SIGKILL coordinator"),
        count("SIGSTOP broker"),
        count("SIGKILL registry"),
        count("exited by itself"),
        count(faults::SUPERSEDED),
        count(faults::WEDGED),
        count(faults::BROKER_LOST),
        restarts.join(", ")
    );
    out += &format!(
        "\n== figures\nevents: {} planned at {}/s, {} sent, {} accepted (202) in {:.0} s = {:.0}/s accepted; {} {:.0} s after the first event\n",
        k.events,
        k.rate,
        sent.sent,
        sent.accepted.len(),
        sending_s,
        sent.accepted.len() as f64 / sending_s.max(0.001),
        if lags.iter().all(|(_, l)| *l == 0) {
            "all caught up"
        } else {
            // A lag of -1: the look-up failed. What is not caught up is counted as lost below.
            "NOT caught up (drain limit reached; lags below)"
        },
        drained_s
    );
    out += &format!(
        "sender: retries by answer {:?} (0 = no answer), given up {}, event-id mismatches {}, at most {} ms behind schedule\n",
        sent.retries,
        sent.given_up.len(),
        sent.id_mismatch,
        sent.max_behind_ms
    );
    for (id, why) in sent.given_up.iter().take(5) {
        out += &format!("  given up: {id}: {why}\n");
    }
    out += &format!("lag at the end: {lags:?}\n\n");
    out += &tally::table(figures);
    if !k.mutate.is_empty() {
        out += &format!("(mutation CHAOS_MUTATE={} was on)\n", k.mutate);
    }
    out
}
