//! The short chaos run of `make test` (the long one is `make chaos`, `benches/chaos.rs`; the
//! harness is `tests/chaos/`): a few thousand signed webhooks through the real binaries on the
//! three-broker cluster while processors and dispatchers are SIGKILLed at random and, once each,
//! the partition leader and the transaction coordinator are SIGKILLed and restarted, a broker is
//! SIGSTOPped past the session time-out, and the registry is SIGKILLed and restarted. Every
//! accepted event has exactly one command per adapter (or a dead letter with a reason), every
//! command exactly one effect at its provider (or a dead letter with a reason).
//!
//! It starts and stops the cluster's brokers, so it is the only test of this binary; it never
//! touches the single broker on 127.0.0.1:9092 nor the shared registry on :8081. The same knobs
//! as the long run apply (`CHAOS_EVENTS`, `CHAOS_RATE`, …).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

#[path = "chaos/mod.rs"]
mod harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_broker_registry_and_stage_faults_every_accepted_event_is_delivered_once() {
    // 3 000 events at 50/s: 60 s of sending; a fault every 3 s (the broker faults take 15–50 s
    // each, so the four kinds run back to back); a stage SIGKILL every 4 s on average; a killed
    // broker stays down 2 s.
    let mut knobs = harness::Knobs::from_env(3_000, 50.0, 3.0, 4.0);
    let unset = |v: &str| std::env::var_os(v).is_none();
    if unset("CHAOS_BROKER_DOWN_S") {
        knobs.broker_down = std::time::Duration::from_secs(2);
    }
    // Caught up within 5 minutes, or a stage is reported wedged after 60 s without progress.
    if unset("CHAOS_DRAIN_S") {
        knobs.drain = std::time::Duration::from_secs(300);
    }
    if unset("CHAOS_STALL_S") {
        knobs.stall = std::time::Duration::from_secs(60);
    }
    let report = harness::run(knobs).await;
    println!("{}", report.text);
    assert!(
        report.clean,
        "loss, duplicates or missing faults:{}",
        report.text
    );
}
