//! Replays started from the console: each runs as a task of the console process, one replay spec
//! after the other (a selection of records is one spec per record), and its progress is kept here
//! so that a reloaded page finds it again.
//!
//! Invariant: a job's state only moves forward (running → done or failed) and is kept for the life
//! of the process; the replay itself is transactional and resumable whatever happens to the job.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::Settings;
use crate::model::event::now_ms;
use crate::ops::replay::{self, ReplaySpec, Summary};

/// The state of one replay job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// The adapter.
    pub adapter: String,
    /// The stage.
    pub stage: String,
    /// The operator's reason.
    pub reason: String,
    /// Who.
    pub operator: String,
    /// When it started (epoch ms).
    pub started_at: i64,
    /// running, done or failed.
    pub status: String,
    /// Dead letters read so far.
    pub read: u64,
    /// Dead letters to read.
    pub total: u64,
    /// Copied so far (of finished specs).
    pub replayed: u64,
    /// Copied, by `class: reason`.
    pub by_reason: BTreeMap<String, u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Every job of this process.
#[derive(Default)]
pub struct Jobs {
    jobs: Arc<Mutex<BTreeMap<String, Job>>>,
}

impl Jobs {
    /// The job `id`.
    pub fn get(&self, id: &str) -> Option<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Starts `specs` (executed, with their reason) as one job; returns its id.
    pub fn start(&self, settings: &Settings, specs: Vec<ReplaySpec>) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let first = specs.first();
        let job = Job {
            id: id.clone(),
            adapter: first.map(|s| s.adapter.clone()).unwrap_or_default(),
            stage: first
                .map(|s| s.stage.as_str().to_string())
                .unwrap_or_default(),
            reason: first.and_then(|s| s.reason.clone()).unwrap_or_default(),
            operator: first.map(|s| s.operator.clone()).unwrap_or_default(),
            started_at: now_ms(),
            status: "running".into(),
            ..Job::default()
        };
        let jobs = Arc::clone(&self.jobs);
        jobs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), job);
        let (settings, key) = (settings.clone(), id.clone());
        tokio::spawn(async move {
            let update = |f: &mut dyn FnMut(&mut Job)| {
                if let Some(j) = jobs.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&key) {
                    f(j);
                }
            };
            let mut base = (0, 0);
            for spec in specs {
                let mut progress = |read: u64, total: u64| {
                    update(&mut |j| {
                        j.read = base.0 + read;
                        j.total = base.1 + total;
                    });
                };
                match replay::run(&settings, &spec, &mut progress).await {
                    Ok(Summary {
                        scanned,
                        selected,
                        by_reason,
                        ..
                    }) => {
                        base = (base.0 + scanned, base.1 + scanned);
                        update(&mut |j| {
                            j.read = base.0;
                            j.total = j.total.max(base.1);
                            j.replayed += selected;
                            for (r, n) in &by_reason {
                                *j.by_reason.entry(r.clone()).or_insert(0) += n;
                            }
                        });
                    }
                    Err(e) => {
                        let msg = crate::telemetry::mask::mask_pii(&e.to_string());
                        update(&mut |j| {
                            j.status = "failed".into();
                            j.error = Some(msg.clone());
                        });
                        return;
                    }
                }
            }
            update(&mut |j| j.status = "done".into());
        });
        id
    }
}
