//! onceflow's provider sandboxes: fake external APIs that behave like the real providers where it
//! matters to an exactly-once pipeline, served on loopback, recording every effect they perform.
//! Used by onceflow's tests (in-process, through [`Sandbox`]), by `make demo` and by the compose
//! file (the `onceflow-sandbox` binary). Never in onceflow's production path.
//!
//! Modules:
//! - [`providers`]: one file per provider API: CRM (HubSpot-style contact upsert), e-mail
//!   (Resend-style with idempotency keys, SendGrid-style without), billing (Stripe-style invoices
//!   with Stripe's idempotency semantics), analytics (Segment-style track with `messageId`
//!   deduplication), webhook (a Standard Webhooks receiver that verifies signatures).
//! - [`faults`]: the fault knobs per provider and the checks every call passes first.
//! - [`state`]: the effects and calls logs, idempotency keys, contacts, the sandbox clock.
//! - [`server`]: the accept loop that can drop a connection without answering.
//! - [`control`]: `/_effects`, `/_calls`, `/_faults`, `/_reset`, `/_clock/advance`, `/healthz`.
//!
//! Invariants:
//! - An effect is recorded only when a provider really performed something new: a replayed
//!   idempotent answer, a deduplicated `messageId` or `webhook-id`, an upsert that changes nothing
//!   are calls, not effects. A SendGrid-style send is an effect every time it is accepted.
//! - Every call is logged with its outcome; a call whose connection was dropped (a lost answer
//!   after the effect, or a reset before it) is logged with status 0 and never answered.
//! - Idempotency keys and message ids are remembered for 24 hours of the sandbox clock, which is
//!   the wall clock plus what [`Sandbox::advance_clock`] added; effect and call times are wall-clock
//!   epoch milliseconds.
//! - Every answer, errors included (unknown path, wrong method, malformed body), is JSON.

// Handlers return the provider's answer as the error of a Result; an axum Response is 128 bytes,
// and boxing it would buy nothing in a test tool.
#![allow(clippy::result_large_err)]

pub mod control;
pub mod faults;
pub mod providers;
pub mod server;
pub mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use faults::{Faults, RateLimit};
pub use state::{Call, Effect};

/// The providers the sandbox serves, each under its own path prefix (`/crm`, `/email`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// HubSpot-style CRM.
    Crm,
    /// Resend-style and SendGrid-style e-mail.
    Email,
    /// Stripe-style billing.
    Billing,
    /// Segment-style analytics.
    Analytics,
    /// A Standard Webhooks receiver.
    Webhook,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 5] = [
        Provider::Crm,
        Provider::Email,
        Provider::Billing,
        Provider::Analytics,
        Provider::Webhook,
    ];

    /// The name in paths and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Crm => "crm",
            Provider::Email => "email",
            Provider::Billing => "billing",
            Provider::Analytics => "analytics",
            Provider::Webhook => "webhook",
        }
    }

    /// The provider named `name`.
    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// The webhook signing secret when none is configured (development only).
pub const DEFAULT_WEBHOOK_SECRET: &str = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA==";

/// How a sandbox starts.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// The API key every provider expects (in its own scheme).
    pub api_key: String,
    /// The Standard Webhooks secret (`whsec_<base64>`) the webhook receiver verifies with.
    pub webhook_secret: String,
    /// Faults per provider at start.
    pub faults: BTreeMap<Provider, Faults>,
    /// Seed of the fault dice, for repeatable runs.
    pub seed: Option<u64>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            api_key: "sandbox-key".into(),
            webhook_secret: DEFAULT_WEBHOOK_SECRET.into(),
            faults: BTreeMap::new(),
            seed: None,
        }
    }
}

/// A sandbox's state, shared by its server and its owner. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    state: Arc<state::State>,
}

impl Sandbox {
    /// A sandbox that is not serving yet.
    pub fn new(config: SandboxConfig) -> Sandbox {
        Sandbox {
            state: Arc::new(state::State::new(config)),
        }
    }

    /// Binds `config.listen` and serves in the background until the returned handle is stopped or
    /// dropped.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Running> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let sandbox = Sandbox::new(config);
        let router = control::router(sandbox.state.clone());
        let task = tokio::spawn(server::serve(listener, router));
        Ok(Running {
            addr,
            sandbox,
            task,
        })
    }

    /// Effects performed by `provider`, oldest first.
    pub fn effects(&self, provider: Provider) -> Vec<Effect> {
        self.state.effects(Some(provider))
    }

    /// Calls `provider` received, oldest first.
    pub fn calls(&self, provider: Provider) -> Vec<Call> {
        self.state.calls(Some(provider))
    }

    /// Replaces `provider`'s faults.
    pub fn set_faults(&self, provider: Provider, faults: Faults) {
        self.state.set_faults(provider, faults);
    }

    /// `provider`'s faults.
    pub fn faults(&self, provider: Provider) -> Faults {
        self.state.faults(provider)
    }

    /// Forgets effects, calls, idempotency keys, message ids and contacts.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Moves the sandbox clock (idempotency key expiry) forward.
    pub fn advance_clock(&self, by: Duration) {
        self.state.advance_clock(by);
    }
}

/// A serving sandbox. Dropping it stops the server.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// Its state.
    pub sandbox: Sandbox,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}
