//! The session's side of its store: partitions restored when assigned ([`Restore`]), and
//! checkpointed (or their files committed durably) when they leave or the session ends.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::Session;
use crate::dedupe::{Partition, Restore, checkpoint, disk};
use crate::model::event::now_ms;
use crate::stage::{SessionError, Work};
use crate::telemetry::metrics;

impl<W: Work> Session<'_, W> {
    /// Restores `missing`, partitions newly owned, from the state directory and the changelog
    /// (on the blocking pool), and installs them in the store.
    pub(super) async fn restore(&mut self, missing: Vec<i32>) -> Result<(), SessionError> {
        let r = self.r;
        let kafka = r.kafka.clone();
        let changelog = r.spec.changelog.clone();
        let reader = r.names.changelog_reader(r.adapter(), r.spec.stage);
        let ttl = r.spec.ttl;
        let max_wait = r.kafka.transaction_timeout + Duration::from_secs(30);
        let parts = missing.clone();
        let (state_dir, backend) = (r.spec.state_dir.clone(), r.spec.store);
        let started = Instant::now();
        let restored = tokio::task::spawn_blocking(move || {
            Restore {
                kafka: &kafka,
                changelog: &changelog,
                reader_group: &reader,
                partitions: &parts,
                ttl,
                now: now_ms(),
                max_wait,
                state_dir: state_dir.as_deref(),
                backend,
            }
            .run::<W::Entry>()
        })
        .await??;
        let (adapter, stage) = (r.adapter().to_string(), r.spec.stage.as_str());
        ::metrics::histogram!(metrics::STORE_RESTORE_SECONDS,
            "adapter" => adapter.clone(), "stage" => stage)
        .record(started.elapsed().as_secs_f64());
        ::metrics::counter!(metrics::STORE_RESTORED, "adapter" => adapter.clone(), "stage" => stage,
            "from" => "checkpoint")
        .increment(restored.from_checkpoints as u64);
        ::metrics::counter!(metrics::STORE_RESTORED, "adapter" => adapter.clone(), "stage" => stage,
            "from" => "changelog")
        .increment(restored.records_read as u64);
        let entries: usize = restored.partitions.values().map(Partition::len).sum();
        for (p, e) in restored.partitions {
            self.store.insert_partition(p, e);
        }
        info!(adapter, stage, partitions = ?missing, entries,
              from_checkpoints = restored.from_checkpoints, changelog_records = restored.records_read,
              took_ms = started.elapsed().as_millis() as u64, "store restored");
        Ok(())
    }

    /// Drops `partitions` from the store, first, on the blocking pool, writing their checkpoints
    /// when the stage keeps them in memory with a state directory, or committing their files
    /// durably when it keeps them on disk (a failure costs the next restore time, nothing else:
    /// it is logged and the session goes on).
    pub(super) async fn checkpoint(&mut self, partitions: &[i32]) {
        let states: Vec<(i32, Partition<W::Entry>)> = partitions
            .iter()
            .filter_map(|p| Some((*p, self.store.drop_partition(*p)?)))
            .collect();
        let Some(dir) = self.r.spec.state_dir.clone() else {
            return;
        };
        if states.is_empty() {
            return;
        }
        let changelog = self.r.spec.changelog.clone();
        let written = tokio::task::spawn_blocking(move || {
            states
                .into_iter()
                .map(|(p, mut state)| {
                    let started = Instant::now();
                    let (entries, offset) = (state.len(), state.next_offset());
                    let result = match &mut state {
                        Partition::Memory(m) => {
                            checkpoint::write(&dir, &changelog, p, &*m, now_ms())
                                .map_err(|e| e.to_string())
                        }
                        Partition::Disk(d) => d
                            .flush(now_ms())
                            .map(|()| disk::path(&dir, &changelog, p))
                            .map_err(|e| e.to_string()),
                    };
                    (p, entries, offset, started.elapsed(), result)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let adapter = self.r.adapter();
        let written = written.unwrap_or_else(|e| {
            warn!(adapter, error = %e,
                "store checkpoints not written; the next restore reads more of the changelog");
            Vec::new()
        });
        for (p, entries, offset, took, result) in written {
            match result {
                Ok(file) => debug!(adapter, partition = p, entries, offset, file = %file.display(),
                    took_ms = took.as_millis() as u64, "store checkpoint written"),
                Err(e) => warn!(adapter, partition = p, error = %e,
                    "store checkpoint not written; the next restore reads more of the changelog"),
            }
        }
    }
}
