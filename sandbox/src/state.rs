//! The sandbox's memory: what each provider did (effects) and was asked (calls), idempotency keys
//! and message ids, CRM contacts, rate-limit buckets, faults, and the sandbox clock.
//!
//! Invariant: one mutex guards it all and is never held across an `await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::faults::Faults;
use crate::{Provider, SandboxConfig};

/// How long idempotency keys and message ids are remembered (sandbox clock).
pub const KEY_TTL_MS: i64 = 24 * 3_600 * 1_000;

/// Something a provider performed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// The provider.
    pub provider: Provider,
    /// When (wall clock, epoch ms).
    pub at_ms: i64,
    /// The `X-Onceflow-Command-Id` of the call, when it had one.
    pub command_id: Option<String>,
    /// The provider's dedupe key: contact e-mail, idempotency key, `messageId`, `webhook-id`, or
    /// the message id a SendGrid-style send was given.
    pub key: String,
    /// The id the provider assigned.
    pub provider_id: Option<String>,
    /// What happened: contact_created, contact_updated, email_sent, email_scheduled,
    /// invoice_created, track, webhook_received.
    pub kind: String,
    /// The relevant fields.
    pub detail: Json,
}

/// A call a provider received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// The provider.
    pub provider: Provider,
    /// When it arrived (wall clock, epoch ms).
    pub at_ms: i64,
    /// Its `X-Onceflow-Command-Id`.
    pub command_id: Option<String>,
    /// Its idempotency key, where the provider has one.
    pub idempotency_key: Option<String>,
    /// The status answered; 0 when the connection was dropped instead.
    pub status: u16,
    /// ok, replayed, deduplicated, rate_limited, injected_429, injected_5xx, storm_5xx,
    /// timeout_after_effect, reset, rejected, unauthorized.
    pub outcome: String,
}

/// A stored answer of an idempotent request.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
enum KeyEntry {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        at: i64,
        answer: Stored,
    },
}

/// What an idempotency key says about a request.
#[derive(Debug, Clone)]
pub enum KeyCheck {
    /// Unknown (or expired): the request executes; the key is now in flight.
    Fresh,
    /// Done before with the same parameters: answer this again.
    Replay(Stored),
    /// Done before with other parameters.
    Mismatch,
    /// Another request with this key is executing.
    InFlight,
}

/// Holds a fresh idempotency key in flight; dropped without [`KeyGuard::done`] (the client went
/// away before the provider acted), it forgets the key, so the key is not stuck in flight.
pub struct KeyGuard {
    state: std::sync::Arc<State>,
    provider: Provider,
    key: String,
    done: bool,
}

impl KeyGuard {
    /// Guards `key` of `provider`.
    pub fn new(state: &std::sync::Arc<State>, provider: Provider, key: &str) -> KeyGuard {
        KeyGuard {
            state: std::sync::Arc::clone(state),
            provider,
            key: key.to_string(),
            done: false,
        }
    }

    /// The request executed: its answer is remembered.
    pub fn done(mut self, answer: Stored) {
        self.done = true;
        self.state.key_end(self.provider, &self.key, Some(answer));
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if !self.done {
            self.state.key_end(self.provider, &self.key, None);
        }
    }
}

/// A CRM contact.
#[derive(Debug, Clone)]
struct Contact {
    id: u64,
    properties: BTreeMap<String, String>,
}

/// A token bucket (the provider's own rate limit).
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: i64,
}

#[derive(Default)]
struct Inner {
    effects: Vec<Effect>,
    calls: Vec<Call>,
    faults: BTreeMap<Provider, Faults>,
    keys: HashMap<(Provider, String), KeyEntry>,
    seen: HashMap<(Provider, String), i64>,
    contacts: BTreeMap<String, Contact>,
    next_contact: u64,
    buckets: HashMap<Provider, Bucket>,
}

/// The shared state.
pub struct State {
    /// The API key every provider expects.
    pub api_key: String,
    /// The webhook receiver's secret.
    pub webhook_secret: String,
    inner: Mutex<Inner>,
    rng: Mutex<fastrand::Rng>,
    clock_offset: AtomicI64,
}

/// Wall-clock epoch milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl State {
    /// The state of a new sandbox.
    pub fn new(config: SandboxConfig) -> State {
        State {
            api_key: config.api_key,
            webhook_secret: config.webhook_secret,
            inner: Mutex::new(Inner {
                faults: config.faults,
                next_contact: 1_000,
                ..Inner::default()
            }),
            rng: Mutex::new(
                config
                    .seed
                    .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
            ),
            clock_offset: AtomicI64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sandbox clock (epoch ms): the wall clock plus every advance.
    pub fn clock_ms(&self) -> i64 {
        now_ms() + self.clock_offset.load(Ordering::SeqCst)
    }

    /// Moves the sandbox clock forward.
    pub fn advance_clock(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.clock_offset.fetch_add(ms, Ordering::SeqCst);
    }

    /// True with probability `p`.
    pub fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64() < p
    }

    /// A uniform integer in `lo..=hi`.
    pub fn uniform(&self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        self.rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .u64(lo..=hi)
    }

    /// A random alphanumeric id of `len` characters.
    pub fn id(&self, len: usize) -> String {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        (0..len).map(|_| rng.alphanumeric()).collect()
    }

    /// Effects of `provider` (all when `None`).
    pub fn effects(&self, provider: Option<Provider>) -> Vec<Effect> {
        let inner = self.lock();
        inner
            .effects
            .iter()
            .filter(|e| provider.is_none_or(|p| e.provider == p))
            .cloned()
            .collect()
    }

    /// Calls of `provider` (all when `None`).
    pub fn calls(&self, provider: Option<Provider>) -> Vec<Call> {
        let inner = self.lock();
        inner
            .calls
            .iter()
            .filter(|c| provider.is_none_or(|p| c.provider == p))
            .cloned()
            .collect()
    }

    /// How many effects and calls each provider has had, calls by outcome: what a long run can
    /// watch without copying the logs.
    pub fn counts(&self) -> BTreeMap<Provider, (usize, BTreeMap<String, usize>)> {
        let inner = self.lock();
        let mut out: BTreeMap<Provider, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
        for e in &inner.effects {
            out.entry(e.provider).or_default().0 += 1;
        }
        for c in &inner.calls {
            *out.entry(c.provider)
                .or_default()
                .1
                .entry(c.outcome.clone())
                .or_default() += 1;
        }
        out
    }

    /// Records an effect.
    pub fn effect(&self, effect: Effect) {
        self.lock().effects.push(effect);
    }

    /// Records a call.
    pub fn call(&self, call: Call) {
        self.lock().calls.push(call);
    }

    /// `provider`'s faults.
    pub fn faults(&self, provider: Provider) -> Faults {
        self.lock()
            .faults
            .get(&provider)
            .cloned()
            .unwrap_or_default()
    }

    /// Every provider's faults.
    pub fn all_faults(&self) -> BTreeMap<Provider, Faults> {
        self.lock().faults.clone()
    }

    /// Replaces `provider`'s faults (and its rate-limit bucket).
    pub fn set_faults(&self, provider: Provider, faults: Faults) {
        let mut inner = self.lock();
        inner.buckets.remove(&provider);
        inner.faults.insert(provider, faults);
    }

    /// Takes one from the `burst_5xx` count of `provider`, if any is left.
    pub fn take_burst(&self, provider: Provider) -> bool {
        let mut inner = self.lock();
        match inner.faults.get_mut(&provider) {
            Some(f) if f.burst_5xx > 0 => {
                f.burst_5xx -= 1;
                true
            }
            _ => false,
        }
    }

    /// Takes a token from `provider`'s bucket (`per_second`, `burst`): Ok(remaining) or
    /// Err(seconds until a token).
    pub fn take_token(&self, provider: Provider, per_second: u32, burst: u32) -> Result<u32, f64> {
        let now = now_ms();
        let mut inner = self.lock();
        let b = inner.buckets.entry(provider).or_insert(Bucket {
            tokens: f64::from(burst),
            at: now,
        });
        let rate = f64::from(per_second.max(1));
        b.tokens = (b.tokens + (now - b.at) as f64 / 1_000.0 * rate).min(f64::from(burst.max(1)));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(b.tokens.floor() as u32)
        } else {
            Err((1.0 - b.tokens) / rate)
        }
    }

    /// What `key` says about a request with `fingerprint`; a fresh key is now in flight.
    pub fn key_begin(&self, provider: Provider, key: &str, fingerprint: &str) -> KeyCheck {
        let now = self.clock_ms();
        let mut inner = self.lock();
        let slot = (provider, key.to_string());
        match inner.keys.get(&slot) {
            Some(KeyEntry::InFlight { .. }) => KeyCheck::InFlight,
            Some(KeyEntry::Done {
                fingerprint: f,
                at,
                answer,
            }) if now - at < KEY_TTL_MS => {
                if f == fingerprint {
                    KeyCheck::Replay(answer.clone())
                } else {
                    KeyCheck::Mismatch
                }
            }
            _ => {
                inner.keys.insert(
                    slot,
                    KeyEntry::InFlight {
                        fingerprint: fingerprint.to_string(),
                    },
                );
                KeyCheck::Fresh
            }
        }
    }

    /// Ends a fresh key's request: its answer is remembered, or (`None`) the key is forgotten.
    pub fn key_end(&self, provider: Provider, key: &str, answer: Option<Stored>) {
        let at = self.clock_ms();
        let mut inner = self.lock();
        let slot = (provider, key.to_string());
        let fingerprint = match inner.keys.get(&slot) {
            Some(KeyEntry::InFlight { fingerprint }) => fingerprint.clone(),
            _ => return,
        };
        match answer {
            Some(answer) => {
                inner.keys.insert(
                    slot,
                    KeyEntry::Done {
                        fingerprint,
                        at,
                        answer,
                    },
                );
            }
            None => {
                inner.keys.remove(&slot);
            }
        }
    }

    /// Whether `id` is new for `provider` within the TTL (and remembers it).
    pub fn first_time(&self, provider: Provider, id: &str) -> bool {
        let now = self.clock_ms();
        let mut inner = self.lock();
        let slot = (provider, id.to_string());
        match inner.seen.get(&slot) {
            Some(at) if now - at < KEY_TTL_MS => false,
            _ => {
                inner.seen.insert(slot, now);
                true
            }
        }
    }

    /// Upserts the contact `email` with `properties`: (id, merged properties, created, changed).
    pub fn upsert_contact(
        &self,
        email: &str,
        properties: &BTreeMap<String, String>,
    ) -> (u64, BTreeMap<String, String>, bool, bool) {
        let mut inner = self.lock();
        let key = email.to_lowercase();
        if let Some(c) = inner.contacts.get_mut(&key) {
            let before = c.properties.clone();
            c.properties
                .extend(properties.iter().map(|(k, v)| (k.clone(), v.clone())));
            return (c.id, c.properties.clone(), false, before != c.properties);
        }
        inner.next_contact += 1;
        let id = inner.next_contact;
        inner.contacts.insert(
            key,
            Contact {
                id,
                properties: properties.clone(),
            },
        );
        (id, properties.clone(), true, true)
    }

    /// Forgets everything but the faults.
    pub fn reset(&self) {
        let mut inner = self.lock();
        let faults = std::mem::take(&mut inner.faults);
        *inner = Inner {
            faults,
            next_contact: 1_000,
            ..Inner::default()
        };
    }
}
