//! What a reader does with an error a consumer hands it instead of a record.
//!
//! Invariant: only a fatal error (the client can never deliver again) ends a read. Every other
//! consumer error is one librdkafka recovers from by itself (a bootstrap broker's connection
//! refused while it is down, a fetch failing until the partition's leader has moved): the reader
//! logs it at `debug` and polls on, within its own deadline, as the stage loop does
//! (`stage::session`). In the 1 M chaos run a broker that could not restart made every changelog
//! restore and every lag look-up fail on "Broker transport failure" for an hour, although the
//! other two brokers served every partition.

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;

/// `polled` as a record, or `None` for an error to poll past; a fatal error is returned.
pub fn record<T, C, X>(consumer: &C, polled: KafkaResult<T>) -> KafkaResult<Option<T>>
where
    C: Consumer<X>,
    X: ConsumerContext,
{
    match polled {
        Ok(m) => Ok(Some(m)),
        Err(e) => match consumer.client().fatal_error() {
            Some(_) => Err(e),
            None => {
                tracing::debug!(error = %e, "consumer error (librdkafka retries)");
                Ok(None)
            }
        },
    }
}
