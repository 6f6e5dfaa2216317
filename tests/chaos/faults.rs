//! The fault schedule. Two loops, each on a thread of its own, recording every fault with its
//! time since the start of the run:
//! - stages: every `kill_every` (±50 %), a random processor or dispatcher is SIGKILLed and
//!   started again after 0–2 s; a stage that exits by itself is noted and restarted too (by the
//!   drain as well, once this loop has stopped);
//! - infrastructure: every `fault_every`, the next of [`Infra`] in turn: the leader of an `events`
//!   partition SIGKILLed and restarted, the coordinator of a processor's transactional id
//!   SIGKILLed and restarted, one broker SIGSTOPped for `pause` (longer than the cluster's 9 s
//!   broker session time-out) and resumed, the registry SIGKILLed and restarted. Before a broker
//!   fault every partition is back in sync on three brokers, so faults never pile up beyond one
//!   broker.
//!
//! The infrastructure loop runs at least until each kind happened once, even when the events
//! were all sent before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::{self, Registry};
use super::fleet::Fleet;

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Seconds since the start of the run.
    pub at_s: f64,
    /// What.
    pub what: String,
    /// On which process or broker, and how it went.
    pub target: String,
}

/// The fault log's name for a stage the harness found wedged and restarted.
pub const WEDGED: &str = "WEDGED stage";

/// The fault log's name for a stage that stopped because it took itself for superseded by
/// another process of its instance: the run never starts one while the other lives, so that is a
/// false alarm of the instance rule (`onceflow::stage::instance`).
pub const SUPERSEDED: &str = "STOPPED as superseded";

/// The fault log's name for a broker that did not start again.
pub const BROKER_LOST: &str = "BROKER LOST";

/// How many times a killed broker is started before it counts as lost.
const START_ATTEMPTS: usize = 3;

/// The infrastructure faults, in the order they are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Infra {
    /// SIGKILL the leader of an `events` partition; restart it.
    KillLeader,
    /// SIGSTOP one broker past the session time-out; SIGCONT.
    PauseBroker,
    /// SIGKILL the registry; restart it.
    RestartRegistry,
    /// SIGKILL the coordinator of a processor's transactional id; restart it.
    KillCoordinator,
}

const ORDER: [Infra; 4] = [
    Infra::KillLeader,
    Infra::PauseBroker,
    Infra::RestartRegistry,
    Infra::KillCoordinator,
];

/// The fault loops' knobs and shared parts.
#[derive(Clone)]
pub struct Chaos {
    /// The run's start.
    pub t0: Instant,
    /// What happened so far.
    pub log: Arc<Mutex<Vec<Fault>>>,
    /// The onceflow processes.
    pub fleet: Arc<Mutex<Fleet>>,
    /// The run's registry.
    pub registry: Arc<Mutex<Registry>>,
    /// Cluster bootstrap list.
    pub bootstrap: String,
    /// The run's settings (for metadata).
    pub settings: onceflow::config::Settings,
    /// The `events` topic and every topic whose replicas must be in sync before a broker fault.
    pub topics: Vec<String>,
    /// Partitions of `events`.
    pub partitions: i32,
    /// Transactional ids of the processors (one is picked for the coordinator fault).
    pub transactional_ids: Vec<String>,
    /// Mean seconds between stage kills (0: none).
    pub kill_every: f64,
    /// Seconds between infrastructure faults.
    pub fault_every: f64,
    /// How long a broker stays SIGSTOPped.
    pub pause: Duration,
    /// How long a killed broker stays down.
    pub broker_down: Duration,
}

impl Chaos {
    fn note(&self, what: &str, target: String) {
        let f = Fault {
            at_s: self.t0.elapsed().as_secs_f64(),
            what: what.into(),
            target,
        };
        eprintln!("[chaos {:>7.1}s] {:<22} {}", f.at_s, f.what, f.target);
        self.log.lock().expect("fault log").push(f);
    }

    /// Sleeps `d` in small steps; false when `stop` came first.
    fn nap(d: Duration, stop: &AtomicBool) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
        }
        true
    }

    /// SIGKILLs and restarts the process named `name` (`deliver:crm`), found wedged because of
    /// `why`.
    pub fn restart_wedged(&self, name: &str, why: &str) {
        let mut fleet = self.fleet.lock().expect("fleet");
        if let Some(i) = fleet.procs.iter().position(|p| p.name == name) {
            fleet.post_mortem(i);
            fleet.kill(i);
            fleet.start(i);
        }
        self.note(WEDGED, format!("{name}: {why}; SIGKILLed and restarted"));
    }

    /// Restarts every process that exited by itself since the last look, and notes it: as
    /// [`SUPERSEDED`] when its log ends with the stop of a process superseded by another of its
    /// instance, else as exited (a start-up that failed while the registry was down, say).
    pub fn restart_exited(&self) {
        let mut fleet = self.fleet.lock().expect("fleet");
        for (i, status) in fleet.exited() {
            let name = fleet.procs[i].name.clone();
            let log = std::fs::read_to_string(fleet.last_log(i)).unwrap_or_default();
            let what = if log.contains("another process took over instance") {
                SUPERSEDED
            } else {
                "exited by itself"
            };
            self.note(what, format!("{name} ({status}); restarted"));
            fleet.start(i);
        }
    }

    /// The stage loop, until `stop`.
    pub fn stages(&self, stop: &AtomicBool) {
        loop {
            let wait = if self.kill_every > 0.0 {
                self.kill_every * (0.5 + fastrand::f64())
            } else {
                1.0
            };
            if !Self::nap(Duration::from_secs_f64(wait), stop) {
                return;
            }
            self.restart_exited();
            let mut fleet = self.fleet.lock().expect("fleet");
            if self.kill_every <= 0.0 {
                continue;
            }
            // procs[0] is ingest, which this loop leaves alone.
            let i = 1 + fastrand::usize(..fleet.procs.len() - 1);
            fleet.kill(i);
            let name = fleet.procs[i].name.clone();
            drop(fleet);
            let down = Duration::from_millis(fastrand::u64(0..2_000));
            self.note("SIGKILL stage", format!("{name}, restarted after {down:?}"));
            std::thread::sleep(down);
            self.fleet.lock().expect("fleet").start(i);
        }
    }

    /// The infrastructure loop, until `stop` and every kind done once; how many of each ran.
    pub fn infra(&self, stop: &AtomicBool) -> usize {
        let meta = cluster::meta_client(&self.settings);
        let never = AtomicBool::new(false);
        let mut n = 0;
        loop {
            let all_once = n >= ORDER.len();
            let flag = if all_once { stop } else { &never };
            if !Self::nap(Duration::from_secs_f64(self.fault_every), flag) {
                return n;
            }
            let kind = ORDER[n % ORDER.len()];
            if kind != Infra::RestartRegistry
                && !cluster::await_full_isr(&meta, &self.topics, Duration::from_secs(120))
            {
                self.note(
                    "(waiting)",
                    "replicas not all in sync after 120 s; going on".into(),
                );
            }
            self.one(kind, &meta);
            n += 1;
        }
    }

    fn one(&self, kind: Infra, meta: &rdkafka::consumer::BaseConsumer) {
        match kind {
            Infra::KillLeader => {
                let partition = fastrand::i32(0..self.partitions);
                match cluster::leader(meta, &self.topics[0], partition) {
                    Ok(b) => self.bounce(
                        "SIGKILL leader",
                        b,
                        format!("leader of {}-{partition}", self.topics[0]),
                    ),
                    Err(e) => self.note("SIGKILL leader", format!("skipped: {e}")),
                }
            }
            Infra::KillCoordinator => {
                let id = &self.transactional_ids[fastrand::usize(..self.transactional_ids.len())];
                match cluster::coordinator(&self.bootstrap, id) {
                    Ok(b) => self.bounce(
                        "SIGKILL coordinator",
                        b,
                        format!("coordinator of transactional id {id}"),
                    ),
                    Err(e) => self.note("SIGKILL coordinator", format!("skipped: {e}")),
                }
            }
            Infra::PauseBroker => {
                let b = 1 + fastrand::i32(0..3);
                let t = Instant::now();
                let r = cluster::stack(&["pause-broker", &b.to_string()]);
                self.note(
                    "SIGSTOP broker",
                    format!("broker {b} for {:?}{}", self.pause, err(&r)),
                );
                std::thread::sleep(self.pause.saturating_sub(t.elapsed()));
                let r = cluster::stack(&["resume-broker", &b.to_string()]);
                self.note("SIGCONT broker", format!("broker {b}{}", err(&r)));
            }
            Infra::RestartRegistry => {
                let t = Instant::now();
                let r = self
                    .registry
                    .lock()
                    .expect("registry")
                    .restart(Duration::from_secs(3));
                self.note(
                    "SIGKILL registry",
                    format!(
                        "down 3 s, answering again after {:.1} s{}",
                        t.elapsed().as_secs_f64(),
                        r.err().map(|e| format!(" ERROR {e}")).unwrap_or_default()
                    ),
                );
            }
        }
    }

    /// SIGKILLs broker `b`, leaves it down `broker_down`, starts it and waits until it is live.
    fn bounce(&self, what: &str, b: i32, why: String) {
        let r = cluster::stack(&["kill-broker", &b.to_string()]);
        self.note(what, format!("broker {b} ({why}){}", err(&r)));
        std::thread::sleep(self.broker_down);
        // A start can fail (the 1 M run at 6cb05d5 lost broker 3 for an hour when its port was
        // taken); it is tried again, and a broker that never comes back fails the run, since
        // every later fault then met a cluster of two.
        for attempt in 1..=START_ATTEMPTS {
            let t = Instant::now();
            let r = cluster::stack(&["start-broker", &b.to_string()]);
            self.note(
                "restart broker",
                format!(
                    "broker {b}, live after {:.1} s{}",
                    t.elapsed().as_secs_f64(),
                    err(&r)
                ),
            );
            if r.is_ok() {
                return;
            }
            if attempt == START_ATTEMPTS {
                self.note(
                    BROKER_LOST,
                    format!("broker {b}: {START_ATTEMPTS} starts failed"),
                );
            }
        }
    }
}

fn err(r: &Result<String, String>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => format!(" ERROR {}", e.lines().next().unwrap_or_default()),
    }
}
