//! The onceflow processes of a chaos run: one `onceflow ingest`, and per adapter one
//! `onceflow process` and one `onceflow deliver`, each with a stable `--instance` (so a restart
//! fences its own zombie), started from the binary Cargo built for this target (release for the
//! bench, debug for the test) or `CHAOS_ONCEFLOW_BIN`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The HMAC secret of the run's webhook source.
pub const SECRET: &str = "chaos-secret";
/// The API key the provider sandboxes expect.
pub const API_KEY: &str = "chaos-key";
/// The webhook source's name.
pub const SOURCE: &str = "chaos";

/// One long-running onceflow process.
pub struct Proc {
    /// `ingest`, `process:crm`, `deliver:billing`, …
    pub name: String,
    args: Vec<String>,
    metrics_env: Option<(&'static str, u16)>,
    child: Option<Child>,
    /// How often it was started.
    pub runs: usize,
}

/// Every onceflow process of the run.
pub struct Fleet {
    dir: PathBuf,
    config: PathBuf,
    bin: PathBuf,
    /// The processes; `procs[0]` is ingest.
    pub procs: Vec<Proc>,
}

fn bin() -> PathBuf {
    std::env::var_os("CHAOS_ONCEFLOW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_onceflow")))
}

impl Fleet {
    /// The processes of `adapters` over the settings file `config`; logs go to `dir`. `ports`
    /// hands out free loopback ports (each stage's metrics listener).
    pub fn new(
        dir: &Path,
        config: &Path,
        adapters: &[&str],
        mut ports: impl FnMut() -> u16,
    ) -> Fleet {
        let mut procs = vec![Proc {
            name: "ingest".into(),
            args: vec!["ingest".into()],
            metrics_env: None,
            child: None,
            runs: 0,
        }];
        for stage in ["process", "deliver"] {
            for a in adapters {
                let var = if stage == "process" {
                    "ONCEFLOW__PROCESSOR__METRICS_LISTEN"
                } else {
                    "ONCEFLOW__DISPATCHER__METRICS_LISTEN"
                };
                procs.push(Proc {
                    name: format!("{stage}:{a}"),
                    args: [stage, "--adapter", a, "--instance", "chaos-0"]
                        .map(String::from)
                        .to_vec(),
                    metrics_env: Some((var, ports())),
                    child: None,
                    runs: 0,
                });
            }
        }
        Fleet {
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            bin: bin(),
            procs,
        }
    }

    /// The log of run `run` of process `i`.
    fn log_of(&self, i: usize, run: usize) -> PathBuf {
        let name = self.procs[i].name.replace(':', "-");
        self.dir.join(format!("{name}-{run}.log"))
    }

    /// The log of process `i`'s latest run.
    pub fn last_log(&self, i: usize) -> PathBuf {
        self.log_of(i, self.procs[i].runs.saturating_sub(1))
    }

    /// Starts process `i`.
    pub fn start(&mut self, i: usize) {
        let log = self.log_of(i, self.procs[i].runs);
        let p = &mut self.procs[i];
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--log-format", "json"])
            .args(&p.args)
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_LOG").unwrap_or_else(|_| "onceflow=warn".into()),
            )
            .env("CHAOS_SOURCE_SECRET", SECRET)
            .env("CHAOS_API_KEY", API_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("a log file"),
            ));
        if let Some((var, port)) = p.metrics_env {
            cmd.env(var, format!("127.0.0.1:{port}"));
        }
        // The variables the mutation runs set reach the stages (ONCEFLOW_TEST_FAULT …);
        // everything else ONCEFLOW__* would silently change the run's settings.
        for (k, _) in std::env::vars() {
            if k.starts_with("ONCEFLOW__") && !k.ends_with("METRICS_LISTEN") {
                cmd.env_remove(k);
            }
        }
        p.child = Some(cmd.spawn().expect("onceflow starts"));
        p.runs += 1;
    }

    /// Starts every process.
    pub fn start_all(&mut self) {
        for i in 0..self.procs.len() {
            self.start(i);
        }
    }

    /// SIGKILLs process `i` (no clean-up, transactions and calls left open) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What a wedged process `i` was doing, kept beside its log before it is killed: its metrics
    /// (`<log>.metrics`) and every thread's stack (`<log>.stacks`, when gdb is installed).
    pub fn post_mortem(&self, i: usize) {
        let p = &self.procs[i];
        let Some(c) = &p.child else { return };
        let base = self.last_log(i);
        if let Some((_, port)) = p.metrics_env
            && let Ok(out) = Command::new("curl")
                .args(["-s", "-m", "5", &format!("http://127.0.0.1:{port}/metrics")])
                .output()
        {
            let _ = std::fs::write(base.with_extension("metrics"), out.stdout);
        }
        if let Ok(out) = Command::new("gdb")
            .args([
                "-p",
                &c.id().to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .stdin(Stdio::null())
            .output()
        {
            let _ = std::fs::write(base.with_extension("stacks"), out.stdout);
        }
        eprintln!("{}", digest(&p.name, &base));
    }

    /// Processes that exited by themselves since the last look: (index, exit status). The caller
    /// restarts them and records it (a stage that stops on its own is worth a line in the report).
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate() {
            if let Some(c) = p.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                out.push((i, status.to_string()));
                p.child = None;
            }
        }
        out
    }

    /// SIGTERM to every process, SIGKILL to those still running after `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        for p in &self.procs {
            if let Some(c) = &p.child {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + grace;
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// What the report of a failed run shows of a wedged stage (CI keeps no files): the metrics that
/// say what it waits for (breaker, calls, aborts, rebalances, lag) and the last lines of its log.
fn digest(name: &str, log: &Path) -> String {
    const WANTED: [&str; 8] = [
        "breaker",
        "delivery_calls",
        "aborts",
        "rebalances",
        "fencings",
        "_lag_",
        "records_total",
        "rate_limit_wait_seconds_count",
    ];
    let metrics = std::fs::read_to_string(log.with_extension("metrics")).unwrap_or_default();
    let mut out = format!("[chaos] post-mortem of {name}: metrics\n");
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && WANTED.iter().any(|w| l.contains(w)))
    {
        out += &format!("    {line}\n");
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(40)..];
    out += &format!(
        "[chaos] post-mortem of {name}: the last {} of {} log lines\n",
        tail.len(),
        lines.len()
    );
    for line in tail {
        out += &format!("    {line}\n");
    }
    out
}
