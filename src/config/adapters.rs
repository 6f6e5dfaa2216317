//! The `[adapters.<name>]` sections: which adapters run, where their external systems live, and
//! how the dispatcher treats each (credentials, rate limit, circuit breaker, in-doubt policy,
//! dry run).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, SecretRef, check_name, invalid, millis, within};
use crate::model::EventType;

/// What the dispatcher does with a command found attempted but not known done (a crash or a lost
/// answer between the call and the commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InDoubt {
    /// Send it again: at-least-once (exactly-once where the provider honours the idempotency key).
    Resend,
    /// Put it in the deliver DLQ with class `in_doubt` for an operator to decide: at-most-once.
    Park,
}

impl InDoubt {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            InDoubt::Resend => "resend",
            InDoubt::Park => "park",
        }
    }
}

/// The dispatcher's circuit breaker of one adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Opens after this many failed calls in a row.
    pub failures: u32,
    /// Opens when at least this share of the last `window` calls failed.
    pub failure_rate: f64,
    /// Calls the failure rate is measured over (and the least needed to judge it).
    pub window: u32,
    /// How long it stays open before it lets probes through; doubled after each failed probe.
    pub open: Duration,
    /// The longest it stays open.
    pub max_open: Duration,
    /// Calls let through while half-open; the breaker closes when one succeeds.
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            failure_rate: 0.5,
            window: 20,
            open: Duration::from_secs(5),
            max_open: Duration::from_secs(60),
            probes: 1,
        }
    }
}

/// Per-adapter settings.
#[derive(Debug, Clone)]
pub struct AdapterSettings {
    /// Base URL of the external system the adapter talks to (the dispatcher needs one).
    pub base_url: Option<String>,
    /// Event types the adapter acts on, when it is configurable (the `webhook` adapter).
    pub event_types: Option<Vec<EventType>>,
    /// The provider's credentials (API key; for `webhook`, the `whsec_…` signing secret), from the
    /// environment or a file.
    pub credentials: Option<SecretRef>,
    /// The in-doubt policy; `None` takes the adapter's default.
    pub in_doubt: Option<InDoubt>,
    /// Everything but the external call happens; receipts say `dry_run`.
    pub dry_run: bool,
    /// Sustained calls per second to the provider (token bucket).
    pub rate_per_second: u32,
    /// Calls allowed in a burst.
    pub burst: u32,
    /// The circuit breaker.
    pub breaker: BreakerSettings,
    /// Which API the provider speaks, where the adapter knows several (`email`: `resend`, which
    /// honours idempotency keys, or `sendgrid`, which does not).
    pub provider: Option<String>,
    /// Sender address (`email`).
    pub from: Option<String>,
}

impl Default for AdapterSettings {
    fn default() -> Self {
        AdapterSettings {
            base_url: None,
            event_types: None,
            credentials: None,
            in_doubt: None,
            dry_run: false,
            rate_per_second: 50,
            burst: 50,
            breaker: BreakerSettings::default(),
            provider: None,
            from: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdapter {
    base_url: Option<String>,
    event_types: Option<Vec<String>>,
    credentials_env: Option<String>,
    credentials_file: Option<PathBuf>,
    in_doubt: Option<String>,
    dry_run: bool,
    rate_per_second: Option<u32>,
    burst: Option<u32>,
    breaker: RawBreaker,
    provider: Option<String>,
    from: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBreaker {
    failures: Option<u32>,
    failure_rate: Option<f64>,
    window: Option<u32>,
    open_ms: Option<u64>,
    max_open_ms: Option<u64>,
    probes: Option<u32>,
}

/// The email providers the `email` adapter speaks.
pub const EMAIL_PROVIDERS: [&str; 2] = ["resend", "sendgrid"];

pub(super) fn validate(
    raw: BTreeMap<String, RawAdapter>,
) -> Result<BTreeMap<String, AdapterSettings>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            "adapters",
            "enable at least one adapter, e.g. [adapters.crm]",
        ));
    }
    let mut adapters = BTreeMap::new();
    for (name, a) in raw {
        check_name(&format!("adapters.{name}"), &name)?;
        let key = |k: &str| format!("adapters.{name}.{k}");
        if !crate::adapters::NAMES.contains(&name.as_str()) {
            return Err(invalid(
                format!("adapters.{name}"),
                format!(
                    "no such adapter; the registry has {}",
                    crate::adapters::NAMES.join(", ")
                ),
            ));
        }
        if let Some(url) = &a.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                key("base_url"),
                format!("`{url}` is not an http(s) URL"),
            ));
        }
        let event_types = match a.event_types {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        EventType::from_name(n).ok_or_else(|| {
                            invalid(
                                format!("{}[{i}]", key("event_types")),
                                format!("unknown event type `{n}`"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let credentials = match (a.credentials_env, a.credentials_file) {
            (None, None) => None,
            (Some(env), None) if !env.is_empty() => Some(SecretRef::Env(env)),
            (None, Some(path)) => Some(SecretRef::File(path)),
            _ => {
                return Err(invalid(
                    key("credentials_env"),
                    "set at most one of credentials_env or credentials_file",
                ));
            }
        };
        let in_doubt = match a.in_doubt.as_deref() {
            None => None,
            Some("resend") => Some(InDoubt::Resend),
            Some("park") => Some(InDoubt::Park),
            Some(other) => {
                return Err(invalid(
                    key("in_doubt"),
                    format!("`{other}` is neither resend nor park"),
                ));
            }
        };
        let rate_per_second = a.rate_per_second.unwrap_or(50);
        within(&key("rate_per_second"), rate_per_second, 1..=100_000)?;
        let burst = a.burst.unwrap_or(rate_per_second);
        if burst == 0 {
            return Err(invalid(key("burst"), "must be at least 1"));
        }
        match (name.as_str(), a.provider.as_deref()) {
            (_, None) => {}
            ("email", Some(p)) if EMAIL_PROVIDERS.contains(&p) => {}
            ("email", Some(p)) => {
                return Err(invalid(
                    key("provider"),
                    format!("`{p}` is not one of {}", EMAIL_PROVIDERS.join(", ")),
                ));
            }
            (_, Some(_)) => {
                return Err(invalid(
                    key("provider"),
                    "only the email adapter speaks several provider APIs",
                ));
            }
        }
        let breaker = breaker(&name, a.breaker)?;
        adapters.insert(
            name,
            AdapterSettings {
                base_url: a.base_url.map(|u| u.trim_end_matches('/').to_string()),
                event_types,
                credentials,
                in_doubt,
                dry_run: a.dry_run,
                rate_per_second,
                burst,
                breaker,
                provider: a.provider,
                from: a.from,
            },
        );
    }
    Ok(adapters)
}

fn breaker(name: &str, raw: RawBreaker) -> Result<BreakerSettings, ConfigError> {
    let key = |k: &str| format!("adapters.{name}.breaker.{k}");
    let d = BreakerSettings::default();
    let failures = raw.failures.unwrap_or(d.failures);
    within(&key("failures"), failures, 1..=1_000)?;
    let failure_rate = raw.failure_rate.unwrap_or(d.failure_rate);
    if !(failure_rate > 0.0 && failure_rate <= 1.0) {
        return Err(invalid(key("failure_rate"), "must be in (0, 1]"));
    }
    let window = raw.window.unwrap_or(d.window);
    within(&key("window"), window, 1..=10_000)?;
    let open = match raw.open_ms {
        Some(ms) => millis(&key("open_ms"), ms, 10, 3_600_000)?,
        None => d.open,
    };
    let max_open = match raw.max_open_ms {
        Some(ms) => millis(&key("max_open_ms"), ms, 10, 3_600_000)?,
        None => d.max_open.max(open),
    };
    if max_open < open {
        return Err(invalid(key("max_open_ms"), "must not be below open_ms"));
    }
    let probes = raw.probes.unwrap_or(d.probes);
    within(&key("probes"), probes, 1..=100)?;
    Ok(BreakerSettings {
        failures,
        failure_rate,
        window,
        open,
        max_open,
        probes,
    })
}
