//! Records whose header names are not UTF-8. Kafka does not require a header name to be UTF-8,
//! and some clients write arbitrary bytes (kcat, Go clients), but rdkafka's header accessors
//! panic on such a name (`CStr::to_str().unwrap()` in `try_get`): every look-up or copy of that
//! record's headers would crash the stage, and the crash would repeat on the same record after
//! every restart. [`readable`] keeps the headers whose names read, drops the others and says how
//! many it dropped, so the stage can dead-letter the record with that reason instead.
//!
//! Invariant: every header of a record returned by [`readable`] can be read without a panic.
//! (The panic is caught here, once per header; the default panic hook still prints it to
//! stderr.)

use std::panic::{AssertUnwindSafe, catch_unwind};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};

/// `m` with only the headers whose names are UTF-8, and how many were dropped.
pub fn readable(m: OwnedMessage) -> (OwnedMessage, usize) {
    let Some(headers) = m.headers() else {
        return (m, 0);
    };
    let all_read = catch_unwind(AssertUnwindSafe(|| {
        (0..headers.count()).for_each(|i| {
            let _ = headers.try_get(i);
        });
    }))
    .is_ok();
    if all_read {
        return (m, 0);
    }
    let mut kept = OwnedHeaders::new();
    let mut dropped = 0;
    for i in 0..headers.count() {
        match catch_unwind(AssertUnwindSafe(|| {
            headers
                .try_get(i)
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
        })) {
            Ok(Some((key, value))) => {
                kept = kept.insert(Header {
                    key: &key,
                    value: value.as_deref(),
                });
            }
            Ok(None) => {}
            Err(_) => dropped += 1,
        }
    }
    let m = OwnedMessage::new(
        m.payload().map(<[u8]>::to_vec),
        m.key().map(<[u8]>::to_vec),
        m.topic().to_string(),
        m.timestamp(),
        m.partition(),
        m.offset(),
        Some(kept),
    );
    (m, dropped)
}
