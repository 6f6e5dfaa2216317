//! `make chaos` (or `cargo bench --bench chaos`): the long chaos run on the local stack's
//! three-broker cluster, with the release binaries. The harness is `tests/chaos/` (shared with the
//! short run in `tests/chaos.rs`); knobs by environment, defaults here: `CHAOS_EVENTS=1000000`,
//! `CHAOS_RATE=400` (events/s), `CHAOS_FAULT_EVERY_S=45`, `CHAOS_KILL_EVERY_S=20`,
//! `CHAOS_P429=0.0005`, `CHAOS_DISPATCH_BATCH=2000`, `CHAOS_DRAIN_S=2700`. Prints the
//! fault schedule and the figures; exits 1 on any loss or duplicate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness: a panic is the failure

#[path = "../tests/chaos/mod.rs"]
mod harness;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; there is nothing to select.
    let mut knobs = harness::Knobs::from_env(1_000_000, 400.0, 45.0, 20.0);
    let unset = |v: &str| std::env::var_os(v).is_none();
    // A random 429 asks the whole adapter to wait its Retry-After (1 s): at 1 % (the short run's
    // rate) no client that honours it can make more than about 90 calls a second, far below the
    // one command per event this run offers analytics. One call in 2 000 keeps throttling in it.
    if unset("CHAOS_P429") {
        knobs.p_429 = 0.0005;
    }
    // On this 2-core machine a transaction costs seconds while the whole pipeline runs: batches
    // that fill up (a backlog) spread that cost over more commands.
    if unset("CHAOS_DISPATCH_BATCH") {
        knobs.dispatch_batch = 2_000;
    }
    // The dispatchers fall behind while the events arrive and catch up after them.
    if unset("CHAOS_DRAIN_S") {
        knobs.drain = std::time::Duration::from_secs(2_700);
    }
    eprintln!("[chaos] {knobs:?}");
    let report = harness::run(knobs).await;
    println!("{}", report.text);
    if !report.clean {
        eprintln!("chaos: LOSS, DUPLICATES OR MISSING FAULTS (see above)");
        std::process::exit(1);
    }
}
