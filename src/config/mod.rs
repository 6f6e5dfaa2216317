//! Settings: one TOML file plus `ONCEFLOW__SECTION__KEY` environment overrides, validated once at
//! start-up into typed [`Settings`] that are passed down to every role.
//!
//! Invariants:
//! - Nothing below `main` reads the environment or a file for configuration; it receives `Settings`.
//! - A bad value stops start-up with a [`ConfigError`] whose message names the offending key in its
//!   dotted form (`kafka.bootstrap_servers`), whatever layer (file or environment) supplied it.
//! - Names that end up inside topic or group names (namespace, adapters, input topics) are checked
//!   against Kafka's legal topic characters here, so the names module never builds an illegal name.
//! - Secrets never live in the file: later sections read them from the environment or a file path.
//!
//! The sections of each role live beside this file: `stage.rs` (processor and dispatcher),
//! `ingest.rs`, `kafka.rs`, `adapters.rs`, `console.rs` and `telemetry.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

mod adapters;
mod console;
mod ingest;
mod kafka;
mod stage;
mod telemetry;

pub use adapters::{AdapterSettings, BreakerSettings, InDoubt};
pub use console::ConsoleSettings;
pub use ingest::{IngestSettings, SourceSettings};
pub use kafka::KafkaSettings;
pub use stage::{DispatcherSettings, Guarantee, ProcessorSettings, StageSettings};
pub use telemetry::TelemetrySettings;

use adapters::RawAdapter;
use console::RawConsole;
use ingest::RawIngest;
use kafka::RawKafka;
use stage::{RawDispatcher, RawProcessor};
use telemetry::RawTelemetry;

/// Prefix of environment overrides; `__` separates nesting levels (`ONCEFLOW__KAFKA__BOOTSTRAP_SERVERS`).
pub const ENV_PREFIX: &str = "ONCEFLOW__";

/// The longest topic name Kafka accepts.
const MAX_TOPIC_NAME: usize = 249;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override could not be parsed into the expected shape.
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `topics.partitions`.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Load(Box::new(e))
    }
}

/// Validated settings for every role.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prefix of every topic and group name onceflow owns (DESIGN.md §3, default `onceflow`).
    pub namespace: String,
    /// Broker connection and client tuning.
    pub kafka: KafkaSettings,
    /// Schema registry connection.
    pub registry: RegistrySettings,
    /// Topic layout.
    pub topics: TopicSettings,
    /// Retry tiers shared by the process and deliver stages.
    pub retry: RetrySettings,
    /// Enabled adapters by name, in name order.
    pub adapters: BTreeMap<String, AdapterSettings>,
    /// HTTP intake.
    pub ingest: IngestSettings,
    /// The transactional processor.
    pub processor: ProcessorSettings,
    /// The dispatcher.
    pub dispatcher: DispatcherSettings,
    /// The operator console.
    pub console: ConsoleSettings,
    /// Trace export (OTLP), off by default.
    pub telemetry: TelemetrySettings,
}

/// Where a secret comes from. Never from the settings file itself.
#[derive(Clone)]
pub enum SecretRef {
    /// The value of an environment variable.
    Env(String),
    /// The contents of a file (trailing newline trimmed).
    File(PathBuf),
    /// A value given in code (tests, embedding); not reachable from the settings file.
    Value(String),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "Env({name})"),
            SecretRef::File(path) => write!(f, "File({})", path.display()),
            SecretRef::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

impl SecretRef {
    /// Reads the secret; `key` names the setting in the error.
    pub fn resolve(&self, key: &str) -> Result<String, ConfigError> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| invalid(key, format!("environment variable {name} is not set")))?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            SecretRef::Value(v) => v.clone(),
        };
        if value.is_empty() {
            return Err(invalid(key, "the secret is empty"));
        }
        Ok(value)
    }
}

/// Schema registry connection.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// Register a schema on first use; turn off in production where schemas are registered by CI.
    pub auto_register: bool,
}

/// Topic layout.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    /// Topics services publish events to.
    pub inputs: Vec<String>,
    /// Partitions of every topic onceflow creates (changelogs must match the topic they shadow).
    pub partitions: i32,
    /// Replication factor of every topic onceflow creates.
    pub replication_factor: i32,
    /// Retention of dead-letter and audit topics.
    pub dlq_retention: Duration,
}

/// Retry tiers: attempt n+1 waits `tiers[n-1]` (with full jitter) on topic `…retry.n`.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Delay before each retry attempt; its length is the number of retry topics per stage.
    pub tiers: Vec<Duration>,
}

// ----- raw (as parsed) shapes; every field defaults so that a partial file plus env works -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    namespace: String,
    kafka: RawKafka,
    registry: RawRegistry,
    topics: RawTopics,
    retry: RawRetry,
    adapters: BTreeMap<String, RawAdapter>,
    ingest: RawIngest,
    processor: RawProcessor,
    dispatcher: RawDispatcher,
    console: RawConsole,
    telemetry: RawTelemetry,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            namespace: "onceflow".into(),
            kafka: RawKafka::default(),
            registry: RawRegistry::default(),
            topics: RawTopics::default(),
            retry: RawRetry::default(),
            adapters: BTreeMap::new(),
            ingest: RawIngest::default(),
            processor: RawProcessor::default(),
            dispatcher: RawDispatcher::default(),
            console: RawConsole::default(),
            telemetry: RawTelemetry::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRegistry {
    url: String,
    auto_register: bool,
}

impl Default for RawRegistry {
    fn default() -> Self {
        RawRegistry {
            url: "http://127.0.0.1:8081".into(),
            auto_register: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTopics {
    inputs: Vec<String>,
    partitions: i32,
    replication_factor: i32,
    dlq_retention_ms: u64,
}

impl Default for RawTopics {
    fn default() -> Self {
        RawTopics {
            inputs: vec!["events".into()],
            partitions: 6,
            replication_factor: 1,
            dlq_retention_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetry {
    tiers_ms: Vec<u64>,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            tiers_ms: vec![1_000, 10_000, 60_000],
        }
    }
}

impl Settings {
    /// Loads `path` (when given) under the environment overrides and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    reason: format!("no such file: {}", path.display()),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        Self::from_figment(figment.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// Parses settings from TOML text alone (no environment): for tests and embedding.
    pub fn from_toml_str(toml: &str) -> Result<Settings, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(toml)))
    }

    fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let raw: Raw = figment.extract()?;
        validate(raw)
    }

    /// Names of the enabled adapters, in name order.
    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Accepts a name part that will be embedded in topic and group names.
pub(crate) fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(invalid(
            key,
            format!("`{value}` has `{c}`; use only a-z, A-Z, 0-9, '.', '_', '-'"),
        ));
    }
    if value.len() > MAX_TOPIC_NAME / 2 {
        return Err(invalid(
            key,
            format!("`{value}` is longer than {} characters", MAX_TOPIC_NAME / 2),
        ));
    }
    Ok(())
}

/// `value` if it lies in `range`, else an error naming `key`, the value and the range.
pub(crate) fn within<T>(key: &str, value: T, range: RangeInclusive<T>) -> Result<T, ConfigError>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        return Ok(value);
    }
    let detail = format!("{value} is outside {}..={}", range.start(), range.end());
    Err(invalid(key, detail))
}

pub(crate) fn millis(key: &str, ms: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    if ms < min || ms > max {
        return Err(invalid(key, format!("{ms} ms is outside {min}..={max} ms")));
    }
    Ok(Duration::from_millis(ms))
}

fn validate(raw: Raw) -> Result<Settings, ConfigError> {
    check_name("namespace", &raw.namespace)?;

    let kafka = kafka::validate(raw.kafka)?;

    let r = raw.registry;
    if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
        return Err(invalid(
            "registry.url",
            format!("`{}` is not an http(s) URL", r.url),
        ));
    }

    let t = raw.topics;
    if t.inputs.is_empty() {
        return Err(invalid(
            "topics.inputs",
            "must name at least one input topic",
        ));
    }
    for (i, name) in t.inputs.iter().enumerate() {
        check_name(&format!("topics.inputs[{i}]"), name)?;
    }
    within("topics.partitions", t.partitions, 1..=10_000)?;
    within("topics.replication_factor", t.replication_factor, 1..=16)?;
    let dlq_retention = millis(
        "topics.dlq_retention_ms",
        t.dlq_retention_ms,
        60_000,
        u64::MAX / 2,
    )?;

    if raw.retry.tiers_ms.is_empty() || raw.retry.tiers_ms.len() > 10 {
        return Err(invalid(
            "retry.tiers_ms",
            "must list between 1 and 10 delays",
        ));
    }
    let tiers = raw
        .retry
        .tiers_ms
        .iter()
        .enumerate()
        .map(|(i, ms)| millis(&format!("retry.tiers_ms[{i}]"), *ms, 1, 86_400_000))
        .collect::<Result<Vec<_>, _>>()?;

    let adapters = adapters::validate(raw.adapters)?;
    let ingest = ingest::validate(raw.ingest, &t.inputs)?;
    let processor = stage::validate_processor(raw.processor)?;
    let dispatcher = stage::validate_dispatcher(raw.dispatcher)?;
    let console = console::validate(raw.console)?;
    let telemetry = telemetry::validate(raw.telemetry)?;

    Ok(Settings {
        namespace: raw.namespace,
        kafka,
        registry: RegistrySettings {
            url: r.url.trim_end_matches('/').to_string(),
            auto_register: r.auto_register,
        },
        topics: TopicSettings {
            inputs: t.inputs,
            partitions: t.partitions,
            replication_factor: t.replication_factor,
            dlq_retention,
        },
        retry: RetrySettings { tiers },
        adapters,
        ingest,
        processor,
        dispatcher,
        console,
        telemetry,
    })
}

pub(crate) fn socket(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, format!("`{value}` is not an ip:port address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventType;

    const MINIMAL: &str = "[adapters.crm]\n";

    #[test]
    fn defaults_fill_a_minimal_file() {
        let s = Settings::from_toml_str(MINIMAL).unwrap();
        assert_eq!(s.namespace, "onceflow");
        assert_eq!(s.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(s.topics.inputs, vec!["events".to_string()]);
        assert_eq!(s.retry.tiers.len(), 3);
        assert_eq!(s.adapter_names().collect::<Vec<_>>(), vec!["crm"]);
        // Adaptive batches by default (group commit): both stages linger 0 ms.
        assert_eq!(s.processor.batch_linger, Some(Duration::ZERO));
        assert_eq!(s.dispatcher.batch_linger, Some(Duration::ZERO));
        let lingering =
            Settings::from_toml_str(&format!("{MINIMAL}\n[processor]\nbatch_linger_ms = 100"));
        assert_eq!(
            lingering.unwrap().processor.batch_linger,
            Some(Duration::from_millis(100))
        );
        assert_eq!(s.processor.store, crate::dedupe::Backend::Memory);
        let on_disk = Settings::from_toml_str(&format!(
            "{MINIMAL}[processor]\nstate_dir = '/var/lib/onceflow'\nstore = 'disk'"
        ))
        .unwrap();
        assert_eq!(on_disk.processor.store, crate::dedupe::Backend::Disk);
        // Judging threads: the machine's cores, at most 4.
        assert!((1..=4).contains(&s.processor.threads));
        let one = Settings::from_toml_str(&format!("{MINIMAL}[processor]\nthreads = 1"));
        assert_eq!(one.unwrap().processor.threads, 1);
    }

    fn err_key(toml: &str) -> String {
        match Settings::from_toml_str(toml) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_number_out_of_range_says_the_value_and_the_range() {
        match Settings::from_toml_str("[dispatcher]\nconcurrency = 0\n[adapters.crm]") {
            Err(ConfigError::Invalid { key, reason }) => {
                assert_eq!(key, "dispatcher.concurrency");
                assert_eq!(reason, "0 is outside 1..=1000");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(err_key("namespace = 'a b'\n[adapters.crm]"), "namespace");
        assert_eq!(
            err_key("[kafka]\nbootstrap_servers = 'nohost'\n[adapters.crm]"),
            "kafka.bootstrap_servers"
        );
        assert_eq!(
            err_key("[topics]\npartitions = 0\n[adapters.crm]"),
            "topics.partitions"
        );
        assert_eq!(
            err_key("[processor]\nthreads = 0\n[adapters.crm]"),
            "processor.threads"
        );
        assert_eq!(
            err_key("[kafka]\nprefetch_records = 0\n[adapters.crm]"),
            "kafka.prefetch_records"
        );
        assert_eq!(
            err_key("[kafka]\nprefetch_kbytes = 2097152\n[adapters.crm]"),
            "kafka.prefetch_kbytes"
        );
        assert_eq!(
            err_key("[kafka]\nprefetch_backoff_ms = 300001\n[adapters.crm]"),
            "kafka.prefetch_backoff_ms"
        );
        assert_eq!(
            err_key("[retry]\ntiers_ms = []\n[adapters.crm]"),
            "retry.tiers_ms"
        );
        assert_eq!(
            err_key("[retry]\ntiers_ms = [1000, 0]\n[adapters.crm]"),
            "retry.tiers_ms[1]"
        );
        assert_eq!(err_key("[adapters.'c/rm']"), "adapters.c/rm");
        assert_eq!(err_key("[adapters.frobnicate]"), "adapters.frobnicate");
        assert_eq!(
            err_key("[adapters.webhook]\nevent_types = ['Nope']"),
            "adapters.webhook.event_types[0]"
        );
        assert_eq!(
            err_key("[adapters.crm]\n[processor]\nguarantee = 'maybe'"),
            "processor.guarantee"
        );
        assert_eq!(
            err_key("[adapters.crm]\n[processor]\nbatch_max_records = 0"),
            "processor.batch_max_records"
        );
        assert_eq!(
            err_key("[adapters.crm]\n[processor]\nstore = 'disk'"),
            "processor.store",
            "disk needs a state_dir"
        );
        assert_eq!(
            err_key("[adapters.crm]\n[dispatcher]\nstate_dir = '/s'\nstore = 'rocks'"),
            "dispatcher.store"
        );
        assert_eq!(
            err_key("[adapters.crm]\n[dispatcher]\nbatch_linger_ms = 60001"),
            "dispatcher.batch_linger_ms"
        );
        assert_eq!(
            err_key("[adapters.crm]\nbase_url = 'ftp://x'"),
            "adapters.crm.base_url"
        );
        assert_eq!(
            err_key("[registry]\nurl = '127.0.0.1:8081'\n[adapters.crm]"),
            "registry.url"
        );
        assert_eq!(err_key(""), "adapters");
    }

    #[test]
    fn ingest_sources_validate_and_name_their_keys() {
        let ok = Settings::from_toml_str(
            "[adapters.crm]\n[ingest.sources.demo]\nsecret_env = 'X'\nallowed_types = ['LeadCaptured']\n",
        )
        .unwrap();
        let demo = &ok.ingest.sources["demo"];
        assert_eq!(demo.allowed_types, vec![EventType::LeadCaptured]);
        assert_eq!((demo.rate_per_second, demo.burst), (50, 100));
        assert_eq!(ok.ingest.topic, "events");
        assert_eq!(
            err_key(
                "[adapters.crm]\n[ingest.sources.demo]\nsecret_env = 'X'\nallowed_types = ['Nope']"
            ),
            "ingest.sources.demo.allowed_types[0]"
        );
        assert_eq!(
            err_key("[adapters.crm]\n[ingest.sources.demo]\n"),
            "ingest.sources.demo.secret_env"
        );
        assert_eq!(
            err_key("[adapters.crm]\n[ingest]\ntopic = 'other'"),
            "ingest.topic"
        );
        assert_eq!(
            err_key("[adapters.crm]\n[ingest]\nlisten = 'localhost'"),
            "ingest.listen"
        );
        let missing = SecretRef::Env("ONCEFLOW_TEST_SURELY_UNSET_VARIABLE".into());
        match missing.resolve("ingest.sources.demo.secret_env") {
            Err(ConfigError::Invalid { key, .. }) => {
                assert_eq!(key, "ingest.sources.demo.secret_env")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            format!("{:?}", SecretRef::Value("hunter2".into())),
            "Value(<redacted>)"
        );
    }

    #[test]
    fn parse_errors_name_the_key() {
        let err =
            Settings::from_toml_str("[topics]\npartitions = 'six'\n[adapters.crm]").unwrap_err();
        assert!(err.to_string().contains("topics.partitions"), "{err}");
        let err =
            Settings::from_toml_str("[kafka]\nbootstrap = 'x:1'\n[adapters.crm]").unwrap_err();
        assert!(err.to_string().contains("bootstrap"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "o.toml",
                "[kafka]\nbootstrap_servers = 'a:1'\n[adapters.crm]\n",
            )?;
            jail.set_env("ONCEFLOW__KAFKA__BOOTSTRAP_SERVERS", "b:2");
            jail.set_env("ONCEFLOW__TOPICS__PARTITIONS", "3");
            let s = Settings::load(Some(Path::new("o.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.kafka.bootstrap_servers, "b:2");
            assert_eq!(s.topics.partitions, 3);
            jail.set_env("ONCEFLOW__TOPICS__PARTITIONS", "-1");
            let err = Settings::load(Some(Path::new("o.toml"))).unwrap_err();
            assert!(err.to_string().contains("topics.partitions"), "{err}");
            Ok(())
        });
    }
}
