//! The delivery side of an adapter, as plain data: the HTTP request a command becomes and the
//! answer it gets, with no HTTP library in sight. The adapter builds the [`Request`] and reads the
//! [`Response`] (both pure); the dispatcher does the I/O.
//!
//! Invariants:
//! - Classification is shared ([`check_status`]): 2xx is success; 408, 429 and 5xx are retryable,
//!   with the provider's `Retry-After` (seconds or an HTTP date) when it gave one; every other
//!   status is permanent, with the status and a masked excerpt of at most [`EXCERPT_BYTES`] of the
//!   body as the reason.
//! - A request's headers never include credentials in anything but the `Authorization` header the
//!   adapter sets, so the dispatcher can leave that one out of every log line.

use std::time::Duration;

use crate::telemetry::mask::mask_pii;

/// Longest excerpt of a refusal's body kept in a DLQ reason.
pub const EXCERPT_BYTES: usize = 300;

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

/// A request to a provider, relative to the adapter's base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path appended to the base URL (empty for the base URL itself), with any query.
    pub path: String,
    /// Headers (names in lower case).
    pub headers: Vec<(String, String)>,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// Body bytes, exactly as sent (webhook signatures cover them).
    pub body: Vec<u8>,
}

impl Request {
    /// A POST of `body` as JSON.
    pub fn post_json(path: impl Into<String>, body: &serde_json::Value) -> Request {
        Request {
            method: Method::Post,
            path: path.into(),
            headers: Vec::new(),
            content_type: "application/json",
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    /// A POST of `fields` as `application/x-www-form-urlencoded`.
    pub fn post_form(path: impl Into<String>, fields: &[(String, String)]) -> Request {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        Request {
            method: Method::Post,
            path: path.into(),
            headers: Vec::new(),
            content_type: "application/x-www-form-urlencoded",
            body: body.into_bytes(),
        }
    }

    /// The request with one more header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Request {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

/// A provider's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (names in lower case).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `Retry-After` as a duration (seconds, or an HTTP date relative to `now_ms`).
    pub fn retry_after(&self, now_ms: i64) -> Option<Duration> {
        let v = self.header("retry-after")?.trim();
        if let Ok(seconds) = v.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        let at = jiff::fmt::rfc2822::parse(v)
            .ok()?
            .timestamp()
            .as_millisecond();
        Some(Duration::from_millis(
            u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0),
        ))
    }

    /// The masked, bounded excerpt of the body a DLQ reason carries.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut end = text.len().min(EXCERPT_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        mask_pii(text[..end].trim())
    }
}

/// What a delivered command came to at the provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id of the effect (contact, message, invoice), when it gives one.
    pub provider_id: Option<String>,
    /// The provider answered with a stored response to an earlier call with the same key.
    pub replayed: bool,
}

/// Why a delivery did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The provider did not perform it; try again (not before `after`, when given).
    #[error("retry later (status {status:?}): {message}")]
    Retry {
        /// The provider's Retry-After, when it gave one.
        after: Option<Duration>,
        /// What happened.
        message: String,
        /// The HTTP status.
        status: Option<u16>,
    },
    /// It will never succeed.
    #[error("permanent (status {status:?}): {reason}")]
    Permanent {
        /// Why (masked).
        reason: String,
        /// The HTTP status.
        status: Option<u16>,
    },
}

/// The shared classification of an answer's status (see the module invariants).
pub fn check_status(adapter: &str, r: &Response, now_ms: i64) -> Result<(), DeliveryError> {
    match r.status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(DeliveryError::Retry {
            after: r.retry_after(now_ms),
            message: format!("{adapter} answered {}: {}", r.status, r.excerpt()),
            status: Some(r.status),
        }),
        s => Err(DeliveryError::Permanent {
            reason: format!("{adapter} refused with {s}: {}", r.excerpt()),
            status: Some(s),
        }),
    }
}

/// What the dispatcher needs to know about how a provider treats a repeated call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// The provider deduplicates by the idempotency key onceflow sends (Stripe, Resend, Segment's
    /// `messageId`, a webhook receiver's `webhook-id`).
    Keys,
    /// Repeating the call changes nothing (an upsert by a natural key).
    Natural,
    /// Every accepted call is one more effect (SendGrid): a repeat is a duplicate.
    None,
}

/// What a command needs from its call, besides the command.
#[derive(Debug, Clone)]
pub struct CallContext<'a> {
    /// The provider credentials (API key; for webhooks the signing secret).
    pub credentials: Option<&'a str>,
    /// The hop count of the event behind the command (0 for an event from outside).
    pub hop: u32,
    /// Now, epoch ms.
    pub now_ms: i64,
}

/// What to do with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send this request.
    Call(Request),
    /// Wait until this time (epoch ms) before planning again: the provider cannot schedule that
    /// far ahead.
    Wait(i64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn statuses_are_classified_once_for_every_adapter() {
        assert_eq!(check_status("x", &answer(201, &[], ""), 0), Ok(()));
        for s in [408, 429, 500, 502, 503] {
            assert!(matches!(
                check_status("x", &answer(s, &[], ""), 0),
                Err(DeliveryError::Retry { .. })
            ));
        }
        match check_status("x", &answer(400, &[], r#"{"to":"ada@example.com"}"#), 0) {
            Err(DeliveryError::Permanent { reason, status }) => {
                assert_eq!(status, Some(400));
                assert!(reason.contains("a***@example.com"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let r = answer(429, &[("Retry-After", "7")], "");
        assert_eq!(r.retry_after(0), Some(Duration::from_secs(7)));
        let date = answer(503, &[("retry-after", "Tue, 24 Nov 2026 10:00:30 GMT")], "");
        let now = jiff::Timestamp::from_second(1_795_514_400)
            .unwrap()
            .as_millisecond(); // 10:00:00
        assert_eq!(date.retry_after(now), Some(Duration::from_secs(30)));
        let long = answer(400, &[], &"é".repeat(400));
        assert!(long.excerpt().len() <= EXCERPT_BYTES);
    }
}
