//! `make chaos` (or `cargo bench --bench chaos`): the long chaos run on the local stack's
//! three-broker cluster, with the release binaries. The harness is `tests/chaos/` (shared with the
//! short run in `tests/chaos.rs`); knobs by environment, defaults here: `CHAOS_EVENTS=1000000`,
//! `CHAOS_RATE=400` (events/s), `CHAOS_FAULT_EVERY_S=45`, `CHAOS_KILL_EVERY_S=20`. Prints the
//! fault schedule and the figures; exits 1 on any loss or duplicate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness: a panic is the failure

#[path = "../tests/chaos/mod.rs"]
mod harness;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; there is nothing to select.
    let knobs = harness::Knobs::from_env(1_000_000, 400.0, 45.0, 20.0);
    eprintln!("[chaos] {knobs:?}");
    let report = harness::run(knobs).await;
    println!("{}", report.text);
    if !report.clean {
        eprintln!("chaos: LOSS, DUPLICATES OR MISSING FAULTS (see above)");
        std::process::exit(1);
    }
}
