//! The dispatcher's HTTP: an adapter's [`Request`] sent to `adapters.<name>.base_url` with reqwest
//! (pooled connections, connect and whole-request timeouts), and its answer as a [`Response`].
//!
//! Invariants:
//! - A failure is classified by whether the provider can have acted on the request:
//!   [`Transport::NotSent`] (the connection was never made: nothing happened) or
//!   [`Transport::MaybeSent`] (a time-out or a connection lost after the request went out: the
//!   effect may have happened and its answer is lost).
//! - Every request carries the command id (`X-Onceflow-Command-Id`), the correlation id
//!   (`X-Correlation-Id`) and a W3C `traceparent` that continues the event's trace with a new span.
//! - Nothing here logs a body or the `Authorization` header.

use std::time::Duration;

use crate::adapters::delivery::{Method, Request, Response};

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Transport {
    /// The request never reached the provider (connection refused, DNS, connect time-out).
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have reached the provider; its answer is lost (time-out, reset).
    #[error("answer lost: {0}")]
    MaybeSent(String),
}

/// A client for one adapter's base URL.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    base_url: String,
}

/// Headers of one call besides the adapter's.
#[derive(Debug, Clone)]
pub struct Trace<'a> {
    /// The command id.
    pub command_id: &'a str,
    /// The correlation id.
    pub correlation_id: &'a str,
    /// The traceparent to send.
    pub traceparent: &'a str,
}

impl Http {
    /// A client for `base_url` with the given bounds.
    pub fn new(
        base_url: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
        pool: usize,
    ) -> Result<Http, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .pool_max_idle_per_host(pool)
            .user_agent(concat!("onceflow/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Http {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
        })
    }

    /// Sends `request` and reads the whole answer.
    pub async fn send(&self, request: &Request, trace: &Trace<'_>) -> Result<Response, Transport> {
        let url = format!("{}{}", self.base_url, request.path);
        let method = match request.method {
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
        };
        let mut builder = self
            .client
            .request(method, url)
            .header("content-type", request.content_type)
            .header("x-onceflow-command-id", trace.command_id)
            .header("x-correlation-id", trace.correlation_id)
            .header("traceparent", trace.traceparent)
            .body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let answer = builder.send().await.map_err(classify)?;
        let status = answer.status().as_u16();
        let headers = answer
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        // The status arrived but the body did not: the provider acted, the answer is lost.
        let body = answer
            .bytes()
            .await
            .map_err(|e| Transport::MaybeSent(describe(&e)))?
            .to_vec();
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn describe(e: &reqwest::Error) -> String {
    // reqwest's Display names the URL, which may carry an e-mail in a path; the kind is enough.
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "the answer's body was cut off".into()
    } else {
        "the connection was lost".into()
    }
}

fn classify(e: reqwest::Error) -> Transport {
    if e.is_connect() {
        Transport::NotSent(describe(&e))
    } else {
        Transport::MaybeSent(describe(&e))
    }
}
