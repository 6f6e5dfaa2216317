//! `model::headers::ErrorEnvelope::read` on arbitrary Kafka headers (real `OwnedHeaders`), and the
//! hop that replaces an envelope (`ErrorEnvelope::headers_for`).
//!
//! Properties, for any list of headers (onceflow's names or any other, repeated, with values that
//! are numbers, other text, bytes that are not UTF-8, or null):
//! - `read` never panics, and finds an envelope exactly when the headers hold a complete one: the
//!   last value of each required header is UTF-8 and parses (stage `process`/`deliver`, a known
//!   class, attempt `u32`, times and offset `i64`, partition `i32`, topic and adapter present).
//! - An envelope read is what those last values say, and it round-trips: writing it and reading it
//!   back gives the same envelope.
//! - A hop (`headers_for` with these headers as the original) keeps every non-envelope header in
//!   order, byte for byte, carries each envelope header exactly once, and reads back as the new
//!   envelope, whatever envelope (complete, partial or garbage) was there before.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use onceflow::kafka::names::Stage;
use onceflow::model::headers::{ErrorClass, ErrorEnvelope, Origin, get, name};
use rdkafka::message::{Header, Headers, OwnedHeaders};

#[derive(Debug, Arbitrary)]
enum Key {
    /// One of the envelope's names (index modulo their count).
    Envelope(u8),
    Traceparent,
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Val {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Stage(bool),
    Class(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Vec<(Key, Val)>,
    /// Fields of the envelope the hop writes.
    class: u8,
    message: String,
    attempt: u32,
    first_failed_at: i64,
    not_before: i64,
    topic: String,
    partition: i32,
    offset: i64,
    adapter: String,
    deliver: bool,
    correlation_id: Option<String>,
    http_status: Option<u16>,
}

fn class(pick: u8) -> ErrorClass {
    ErrorClass::ALL[usize::from(pick) % ErrorClass::ALL.len()]
}

fn build(list: &[(Key, Val)]) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    for (key, val) in list {
        let key = match key {
            Key::Envelope(i) => name::ENVELOPE[usize::from(*i) % name::ENVELOPE.len()],
            Key::Traceparent => name::TRACEPARENT,
            Key::Other(s) => s.as_str(),
        };
        let text;
        let value: Option<&[u8]> = match val {
            Val::Null => None,
            Val::Int(n) => {
                text = n.to_string();
                Some(text.as_bytes())
            }
            Val::Text(s) => Some(s.as_bytes()),
            Val::Bytes(b) => Some(b),
            Val::Stage(d) => Some(if *d { b"deliver" } else { b"process" }),
            Val::Class(c) => Some(class(*c).as_str().as_bytes()),
        };
        headers = headers.insert(Header { key, value });
    }
    headers
}

/// The envelope the headers hold, by the contract alone (last value of each name wins).
fn expected(h: &OwnedHeaders) -> Option<ErrorEnvelope> {
    let g = |k: &str| get(Some(h), k).map(str::to_string);
    Some(ErrorEnvelope {
        class: ErrorClass::ALL
            .into_iter()
            .find(|c| Some(c.as_str()) == g(name::ERROR_CLASS).as_deref())?,
        message: g(name::ERROR_MESSAGE).unwrap_or_default(),
        attempt: g(name::ATTEMPT)?.parse().ok()?,
        first_failed_at: g(name::FIRST_FAILED_AT)?.parse().ok()?,
        not_before: g(name::NOT_BEFORE)?.parse().ok()?,
        origin: Origin {
            topic: g(name::ORIGIN_TOPIC)?,
            partition: g(name::ORIGIN_PARTITION)?.parse().ok()?,
            offset: g(name::ORIGIN_OFFSET)?.parse().ok()?,
        },
        adapter: g(name::ADAPTER)?,
        stage: match g(name::STAGE)?.as_str() {
            "process" => Stage::Process,
            "deliver" => Stage::Deliver,
            _ => return None,
        },
        correlation_id: g(name::CORRELATION_ID),
        http_status: g(name::HTTP_STATUS).and_then(|s| s.parse().ok()),
    })
}

fn own(h: &OwnedHeaders) -> Vec<(String, Option<Vec<u8>>)> {
    h.iter()
        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
        .collect()
}

fuzz_target!(|input: Input| {
    let original = build(&input.headers);
    let read = ErrorEnvelope::read(Some(&original));
    assert_eq!(read, expected(&original), "read disagrees with the headers");
    if let Some(e) = &read {
        let written = e.headers_for::<OwnedHeaders>(None);
        assert_eq!(
            ErrorEnvelope::read(Some(&written)).as_ref(),
            Some(e),
            "round trip"
        );
    }
    assert_eq!(ErrorEnvelope::read::<OwnedHeaders>(None), None);

    let hop = ErrorEnvelope::new(
        class(input.class),
        &input.message,
        input.attempt,
        input.first_failed_at,
        input.not_before,
        Origin {
            topic: input.topic,
            partition: input.partition,
            offset: input.offset,
        },
        &input.adapter,
        if input.deliver {
            Stage::Deliver
        } else {
            Stage::Process
        },
        input.correlation_id,
    )
    .with_http_status(input.http_status);
    let out = hop.headers_for(Some(&original));
    assert_eq!(
        ErrorEnvelope::read(Some(&out)).as_ref(),
        Some(&hop),
        "the hop's envelope"
    );
    let kept: Vec<_> = own(&original)
        .into_iter()
        .filter(|(k, _)| !name::ENVELOPE.contains(&k.as_str()))
        .collect();
    let after = own(&out);
    assert_eq!(
        after[..kept.len()],
        kept[..],
        "the record's own headers, in order"
    );
    for key in name::ENVELOPE {
        let n = after.iter().filter(|(k, _)| k == key).count();
        let optional = (key == name::CORRELATION_ID && hop.correlation_id.is_none())
            || (key == name::HTTP_STATUS && hop.http_status.is_none());
        assert_eq!(
            n,
            usize::from(!optional),
            "{key} appears {n} times after a hop"
        );
    }
    assert_eq!(
        after.len(),
        kept.len()
            + after
                .iter()
                .filter(|(k, _)| name::ENVELOPE.contains(&k.as_str()))
                .count()
    );
});
