//! The transactional producer's delivery reports, counted per transaction: the producer's
//! context ([`Deliveries`]) records where each record of the open transaction was written, and
//! the transaction waits once for all of them.
//!
//! rdkafka's `FutureProducer` gives every record a boxed one-shot channel and a future of its own;
//! a stage sends thousands of records a transaction and only ever waits for all of them, so the
//! channels and futures were an eighth of the committer's CPU samples, besides their share of the
//! polling thread's (bench/PROCESSOR.md). Here a record's delivery opaque is a plain number: the
//! transaction's generation and the record's index in it.
//!
//! Invariants:
//! - A report counts only for the transaction it was sent in: [`Deliveries::begin`] starts a new
//!   generation, and a late report of an earlier one (an aborted transaction's purged records) is
//!   ignored.
//! - [`Deliveries::all`] returns once every record sent in the generation was reported, with the
//!   (partition, offset) of each in the order they were sent, or with the first failure.
//! - One transaction at a time: records of a generation are sent by one caller, one after the other.

use std::sync::{Mutex, MutexGuard, PoisonError};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tokio::sync::Notify;

/// What is not yet known of a record's position.
const UNKNOWN: (i32, i64) = (-1, -1);

/// The delivery reports of the open transaction (the transactional producer's context).
#[derive(Default)]
pub struct Deliveries {
    state: Mutex<State>,
    /// Signalled when the last report of the generation came, or a failure.
    settled: Notify,
}

#[derive(Default)]
struct State {
    generation: u32,
    /// Where each record sent in this generation was written, in the order they were sent.
    at: Vec<(i32, i64)>,
    reported: usize,
    failed: Option<KafkaError>,
}

impl State {
    fn settled(&self) -> bool {
        self.failed.is_some() || self.reported == self.at.len()
    }
}

impl Deliveries {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock left counts, not broken invariants, behind.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a transaction's generation: nothing sent, nothing reported.
    pub fn begin(&self) {
        let mut s = self.state();
        s.generation = s.generation.wrapping_add(1);
        s.at.clear();
        s.reported = 0;
        s.failed = None;
    }

    /// The opaque of the next record of the generation, counted as sent; [`Deliveries::unsend`]
    /// takes it back if librdkafka refused the record.
    pub fn next(&self) -> usize {
        let mut s = self.state();
        let index = s.at.len();
        s.at.push(UNKNOWN);
        opaque(s.generation, index)
    }

    /// The last record counted by [`Deliveries::next`] was not enqueued.
    pub fn unsend(&self) {
        self.state().at.pop();
    }

    /// Waits for every record sent in the generation: their (partition, offset), in order, or the
    /// first failure.
    pub async fn all(&self) -> Result<Vec<(i32, i64)>, KafkaError> {
        loop {
            // Registered before the state is read, so a report in between is not missed.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut s = self.state();
                if let Some(e) = s.failed.clone() {
                    return Err(e);
                }
                if s.settled() {
                    return Ok(std::mem::take(&mut s.at));
                }
            }
            settled.await;
        }
    }

    fn report(&self, opaque: usize, result: Result<(i32, i64), &KafkaError>) {
        let (generation, index) = parts(opaque);
        let mut s = self.state();
        if s.generation != generation || index >= s.at.len() {
            return;
        }
        match result {
            Ok(at) => s.at[index] = at,
            Err(e) => {
                if s.failed.is_none() {
                    s.failed = Some(e.clone());
                }
            }
        }
        s.reported += 1;
        if s.settled() {
            drop(s);
            self.settled.notify_waiters();
        }
    }
}

fn opaque(generation: u32, index: usize) -> usize {
    ((generation as usize) << 32) | (index & 0xffff_ffff)
}

fn parts(opaque: usize) -> (u32, usize) {
    ((opaque >> 32) as u32, opaque & 0xffff_ffff)
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(m) => self.report(opaque, Ok((m.partition(), m.offset()))),
            Err((e, _)) => self.report(opaque, Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    fn failure() -> KafkaError {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
    }

    #[tokio::test]
    async fn all_waits_for_every_record_and_gives_them_in_send_order() {
        let d = std::sync::Arc::new(Deliveries::default());
        d.begin();
        let (a, b) = (d.next(), d.next());
        let waiting = tokio::spawn({
            let d = std::sync::Arc::clone(&d);
            async move { d.all().await }
        });
        tokio::task::yield_now().await;
        d.report(b, Ok((1, 7)));
        assert!(!waiting.is_finished());
        d.report(a, Ok((0, 3)));
        assert_eq!(waiting.await.unwrap().unwrap(), [(0, 3), (1, 7)]);
    }

    #[tokio::test]
    async fn a_report_of_an_earlier_transaction_does_not_count() {
        let d = Deliveries::default();
        d.begin();
        let old = d.next();
        d.begin();
        let new = d.next();
        d.report(old, Err(&failure()));
        d.report(old, Ok((0, 1)));
        assert_eq!(d.state().reported, 0);
        d.report(new, Ok((0, 2)));
        assert_eq!(d.all().await.unwrap(), [(0, 2)]);
    }

    #[tokio::test]
    async fn the_first_failure_ends_the_wait() {
        let d = Deliveries::default();
        d.begin();
        let (a, _b) = (d.next(), d.next());
        d.report(a, Err(&failure()));
        assert!(matches!(
            d.all().await,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            ))
        ));
    }

    #[tokio::test]
    async fn a_refused_record_is_not_waited_for() {
        let d = Deliveries::default();
        d.begin();
        let a = d.next();
        let _refused = d.next();
        d.unsend();
        d.report(a, Ok((2, 9)));
        assert_eq!(d.all().await.unwrap(), [(2, 9)]);
        // Nothing sent: nothing to wait for.
        d.begin();
        assert_eq!(d.all().await.unwrap(), []);
    }

    #[test]
    fn an_opaque_holds_its_generation_and_index() {
        assert_eq!(parts(opaque(u32::MAX, 123_456)), (u32::MAX, 123_456));
        assert_eq!(parts(opaque(0, 0)), (0, 0));
    }
}
