//! The codec against the real schema registry: a schema from `schemas/` registered through
//! schema_registry_converter, a value encoded in the Confluent wire format and decoded back equal.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use apache_avro::types::Value;
use onceflow::codec::catalog::Catalog;
use onceflow::codec::{AvroCodec, Codec, CodecError, RecordSchema};

fn lead_v1() -> RecordSchema {
    Catalog::builtin()
        .unwrap()
        .get("lead_captured", 1)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_schema_from_the_folder_round_trips_through_the_registry() {
    let s = common::settings();
    let schema = lead_v1();
    assert_eq!(schema.full_name(), "io.onceflow.events.LeadCaptured");
    let topic = &s.topics.inputs[0];
    let codec = AvroCodec::new(&s.registry).unwrap();

    let bytes = codec
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());

    // A second encoder (no shared cache) gets the same id: the schema is registered under the
    // TopicRecordNameStrategy subject, not merely cached.
    let other = AvroCodec::new(&s.registry).unwrap();
    let again = other
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    assert_eq!(u32::from_be_bytes(again[1..5].try_into().unwrap()), id);

    // A fresh decoder must fetch the writer schema by id from the registry.
    let decoded = AvroCodec::new(&s.registry)
        .unwrap()
        .decode(&bytes)
        .await
        .unwrap();
    assert_eq!(decoded.value, common::lead_v1_value());
    assert_eq!(
        decoded.record_name.as_deref(),
        Some("io.onceflow.events.LeadCaptured")
    );
}

#[tokio::test]
async fn undecodable_bytes_are_typed_errors_not_panics() {
    let s = common::settings();
    let codec = AvroCodec::new(&s.registry).unwrap();

    for garbage in [
        &b""[..],
        &b"\x01\x00\x00\x00\x01abc"[..],
        &b"{\"json\":true}"[..],
        &b"\x00\x00"[..],
    ] {
        match codec.decode(garbage).await {
            Err(e @ CodecError::Decode { .. }) => assert!(!e.is_retriable(), "{e}"),
            other => panic!("{garbage:?}: expected a decode error, got {other:?}"),
        }
    }
    // Wire format, but a schema id the registry never issued.
    let unknown = [0u8, 0x7f, 0xff, 0xff, 0xf0, 2, 3];
    assert!(matches!(
        codec.decode(&unknown).await,
        Err(CodecError::Decode { .. })
    ));

    // Truncated: a valid record cut short.
    let schema = lead_v1();
    let bytes = codec
        .encode(&s.topics.inputs[0], &schema, common::lead_v1_value())
        .await
        .unwrap();
    let cut = &bytes[..bytes.len() - 10];
    let r = codec.decode(cut).await;
    assert!(matches!(r, Err(CodecError::Decode { .. })), "{r:?}");
}

#[tokio::test]
async fn a_value_that_does_not_match_its_schema_is_refused_before_the_registry() {
    let s = common::settings();
    let codec = AvroCodec::new(&s.registry).unwrap();
    let schema = lead_v1();
    let bad = Value::Record(vec![("email".into(), Value::Int(3))]);
    assert!(matches!(
        codec.encode("x", &schema, bad).await,
        Err(CodecError::Encode {
            retriable: false,
            ..
        })
    ));
}

#[tokio::test]
async fn without_auto_registration_an_unregistered_subject_is_an_error_and_a_registered_one_works()
{
    let s = common::settings();
    let topic = &s.topics.inputs[0];
    let schema = lead_v1();
    let mut production = s.registry.clone();
    production.auto_register = false;
    let strict = AvroCodec::new(&production).unwrap();

    match strict.encode(topic, &schema, common::lead_v1_value()).await {
        Err(e @ CodecError::Encode { .. }) => assert!(!e.is_retriable(), "{e}"),
        other => panic!("expected an encode error for an unregistered subject, got {other:?}"),
    }

    // Registered (here by a codec that may register; in production by CI), the same strict codec
    // finds the subject on its next attempt, with the registered id: the failure was not cached.
    let registering = AvroCodec::new(&s.registry).unwrap();
    let registered = registering
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    let bytes = strict
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    assert_eq!(bytes[1..5], registered[1..5], "same schema id");
    assert_eq!(bytes, registered);
}

/// A schema registry of the test's own (the stack's AxonOps binary, memory storage, a free port),
/// which forgets every schema when it restarts: the stack's registry before it kept them in
/// PostgreSQL.
struct Forgetful {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Forgetful {
    fn start(port: u16, dir: &std::path::Path) -> Forgetful {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let cache = std::env::var_os("ONCEFLOW_STACK_CACHE").map_or_else(
            || root.join("deploy/local/.cache"),
            std::path::PathBuf::from,
        );
        let config = dir.join("registry.yaml");
        std::fs::write(
            &config,
            format!(
                "server:\n  host: \"127.0.0.1\"\n  port: {port}\nstorage:\n  type: memory\n\
                 compatibility:\n  default_level: BACKWARD\nlogging:\n  level: warn\n"
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(cache.join("bin/schema-registry"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SCHEMA_REGISTRY_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .args(["-config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the stack's schema registry binary (deploy/local/stack up installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the test's registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Forgetful {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn restart(mut self) -> Forgetful {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        Forgetful::start(self.port, &self.dir)
    }
}

impl Drop for Forgetful {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings that point at a forgetful registry of the test's own (`tag` names its directory).
fn with_forgetful_registry(tag: &str) -> (onceflow::config::Settings, Forgetful) {
    let mut s = common::settings();
    let dir = std::env::temp_dir().join(format!("onceflow-registry-{tag}-{}", s.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let registry = Forgetful::start(common::free_port(), &dir);
    s.registry.url = format!("http://127.0.0.1:{}", registry.port);
    (s, registry)
}

/// A registry that lost its schemas (restarted on memory storage) leaves the ids a codec cached
/// dangling. Ingest's verifying codec notices before the bytes leave it, registers the schema
/// again and encodes with an id the registry has: the record decodes. A plain codec keeps
/// writing the lost id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifying_codec_registers_again_a_schema_the_registry_lost() {
    let (s, registry) = with_forgetful_registry("c");
    let schema = lead_v1();
    let topic = &s.topics.inputs[0];
    let codec = AvroCodec::verifying(&s.registry).unwrap();
    let plain = AvroCodec::new(&s.registry).unwrap();
    let id = |b: &[u8]| u32::from_be_bytes(b[1..5].try_into().unwrap());
    let first = codec
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    let same = plain
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    assert_eq!(id(&same), id(&first));

    let registry = registry.restart();
    // The plain codec writes the lost id: nobody can decode that.
    let dangling = plain
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    assert_eq!(id(&dangling), id(&first));
    assert!(
        AvroCodec::new(&s.registry)
            .unwrap()
            .decode(&dangling)
            .await
            .is_err(),
        "the restarted registry knows nothing"
    );
    // The verifying codec notices and registers the schema again.
    let again = codec
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    let decoded = AvroCodec::new(&s.registry)
        .unwrap()
        .decode(&again)
        .await
        .unwrap();
    assert_eq!(decoded.record_name.as_deref(), Some(schema.full_name()));
    drop(registry);
}

/// The schema id of wire-format bytes.
fn schema_id(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[1..5].try_into().unwrap())
}

/// The same with a restarted registry that gave the lost id to an unrelated schema: the id
/// exists, but the verifying codec compares the registry's schema under it with the record's,
/// registers the schema again and encodes with an id that decodes as the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifying_codec_never_encodes_under_an_id_the_registry_gave_another_schema() {
    let (s, registry) = with_forgetful_registry("v");
    let codec = AvroCodec::verifying(&s.registry).unwrap();
    let schema = lead_v1();
    let lead = || codec.encode(&s.topics.inputs[0], &schema, common::lead_v1_value());
    let first = schema_id(&lead().await.unwrap());

    let registry = registry.restart();
    register_others(&s.registry.url, 0, 3).await;
    let other = registry_gives(&s, first).await.unwrap();
    assert!(other.starts_with("Other"), "the id names {other}");
    let again = lead().await.unwrap();
    assert_ne!(schema_id(&again), first);
    let decoded = AvroCodec::new(&s.registry).unwrap().decode(&again).await;
    assert_eq!(
        decoded.unwrap().record_name.as_deref(),
        Some(schema.full_name())
    );
    drop(registry);
}

/// A stage confirms its batches one after the other, and each confirmation looks the ids up at
/// once: the gap that spaces ingest's per-record lookups would hold every transaction back by up
/// to [`MIN_GAP`] (bench/DELIVERY.md). Ingest's verifying codec keeps the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_s_codec_confirms_batch_after_batch_without_waiting_for_a_gap() {
    use onceflow::codec::ids::MIN_GAP;
    let s = common::settings();
    let schema = lead_v1();
    let topic = &s.topics.inputs[0];
    const BATCHES: u32 = 11;
    // The time BATCHES confirmations (or encodes) one after the other take.
    async fn in_a_row<F: std::future::Future<Output = ()>>(
        mut each: impl FnMut() -> F,
    ) -> std::time::Duration {
        let started = std::time::Instant::now();
        for _ in 0..BATCHES {
            each().await;
        }
        started.elapsed()
    }
    let stage = AvroCodec::new(&s.registry).unwrap();
    let id = schema_id(
        &stage
            .encode(topic, &schema, common::lead_v1_value())
            .await
            .unwrap(),
    );
    // The best of three rounds: a lookup slowed by a busy machine is not a gap.
    let mut stage_took = std::time::Duration::MAX;
    for _ in 0..3 {
        let took = in_a_row(|| async { stage.confirm([id]).await.unwrap() }).await;
        stage_took = stage_took.min(took);
    }
    // Spaced by the gap, they would take (BATCHES - 1) gaps at least, in every round.
    let spaced = MIN_GAP * (BATCHES - 1);
    assert!(
        stage_took < spaced,
        "{BATCHES} confirmations took {stage_took:?}"
    );
    let ingest = AvroCodec::verifying(&s.registry).unwrap();
    let ingest_took = in_a_row(|| async {
        ingest
            .encode(topic, &schema, common::lead_v1_value())
            .await
            .unwrap();
    })
    .await;
    assert!(
        ingest_took >= spaced,
        "{BATCHES} verified encodes took {ingest_took:?}"
    );
}

/// Registers `n` unrelated schemas (`Other{from}`, …), so that the ids registered after them start
/// past them.
async fn register_others(url: &str, from: usize, n: usize) {
    let http = reqwest::Client::new();
    for i in from..from + n {
        let schema = format!(r#"{{"type":"record","name":"Other{i}","fields":[]}}"#);
        let answer = http
            .post(format!("{url}/subjects/other-{i}-value/versions"))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema }))
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "registering: {}",
            answer.status()
        );
    }
}

/// Runs the CRM processor over 20 leads, restarts its (forgetful) registry, registers `others`
/// unrelated schemas on the restarted one, and runs it over 20 more; the commands on the outbox
/// (read committed) and the schema id the processor had cached for them before the restart.
/// `others_first` unrelated schemas are registered before anything else. The registry is handed
/// back running.
async fn processor_across_a_registry_restart(
    tag: &str,
    others_first: usize,
    others: usize,
) -> (
    onceflow::config::Settings,
    Forgetful,
    Vec<common::RawRec>,
    u32,
) {
    let (mut s, registry) = with_forgetful_registry(tag);
    s.processor.instance_id = tag.into();
    register_others(&s.registry.url, 0, others_first).await;
    common::create_plan(&s).await;
    let names = onceflow::kafka::names::Names::new(&s);
    let group = names.group("crm", onceflow::kafka::names::Stage::Process);
    let outbox = names.outbox("crm");
    let leads = |from: usize| -> Vec<_> {
        (from..from + 20)
            .map(|i| common::lead(&format!("F-{i}"), &format!("f{i}@x.io")))
            .collect()
    };
    let read = |s: &onceflow::config::Settings| {
        let (s2, t) = (s.clone(), outbox.clone());
        tokio::task::spawn_blocking(move || {
            common::read_all_bytes(&s2, &t, onceflow::kafka::client::Isolation::ReadCommitted)
        })
    };
    let running = common::Running::start(common::crm(&s));
    common::publish(&s, leads(0)).await;
    let limit = std::time::Duration::from_secs(90);
    common::await_caught_up(&s, &group, &s.topics.inputs, limit).await;
    let before = read(&s).await.unwrap();
    assert_eq!(before.len(), 20);
    let cached = schema_id(&before[0].value);

    // The registry forgets everything; others register first; the producer registers the event
    // schema again.
    let registry = registry.restart();
    register_others(&s.registry.url, others_first, others).await;
    common::publish(&s, leads(20)).await;
    common::await_caught_up(&s, &group, &s.topics.inputs, limit).await;
    running.stop().await;

    let records = read(&s).await.unwrap();
    assert_eq!(records.len(), 40);
    common::cleanup_plan(&s).await;
    let after = records
        .into_iter()
        .filter(|r| {
            // The 20 commands written before the registry forgot them are beyond help.
            !(0..20).any(|i| r.key == records_key(i))
        })
        .collect();
    (s, registry, after, cached)
}

/// What the registry now gives for schema id `id`: its record's name, or `None` (404).
async fn registry_gives(s: &onceflow::config::Settings, id: u32) -> Option<String> {
    let answer = reqwest::get(format!("{}/schemas/ids/{id}", s.registry.url))
        .await
        .unwrap();
    if answer.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    let body: serde_json::Value = answer.json().await.unwrap();
    let schema = apache_avro::Schema::parse_str(body["schema"].as_str().unwrap()).unwrap();
    Some(schema.name().unwrap().fullname(None))
}

/// Decodes every command written after the restart; each must be a CRM command.
async fn assert_commands_decode(s: &onceflow::config::Settings, after: &[common::RawRec]) {
    assert_eq!(after.len(), 20);
    let codec = AvroCodec::new(&s.registry).unwrap();
    for r in after {
        let decoded = codec.decode(&r.value).await.unwrap_or_else(|e| {
            panic!("a command committed after the registry lost its schemas does not decode: {e}")
        });
        assert_eq!(
            decoded.record_name.as_deref(),
            Some("io.onceflow.commands.CrmUpsertContact"),
            "a command committed after the registry lost its schemas decodes as another record"
        );
    }
}

/// The processor encodes commands with schema ids it cached; a registry that lost its schemas
/// while the processor runs must not get commands nobody can decode. Before each commit the
/// registry confirms the batch's ids; a lost one makes the batch be redone, registering again.
/// Unrelated schemas registered first put the command schema's first id past every id the
/// restarted registry hands out, so a command committed with it stays undecodable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_processor_never_commits_a_command_whose_schema_the_registry_lost() {
    let (s, registry, after, cached) = processor_across_a_registry_restart("forgetful", 5, 0).await;
    assert_eq!(registry_gives(&s, cached).await, None, "the id is lost");
    assert_commands_decode(&s, &after).await;
    drop(registry);
}

/// The same, but the restarted registry hands the command schema's cached id to an unrelated
/// schema before the processor asks: the id exists, and a command committed with it would
/// decode as that other record. The confirmation compares the registry's schema under the id
/// with the command's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_processor_never_commits_a_command_under_an_id_the_registry_gave_another_schema()
{
    let (s, registry, after, cached) =
        processor_across_a_registry_restart("reassigned", 0, 5).await;
    let other = registry_gives(&s, cached).await.unwrap();
    assert!(other.starts_with("Other"), "the id names {other}");
    assert!(
        after.iter().all(|r| schema_id(&r.value) != cached),
        "a command was committed under the id {cached} the registry gave another schema"
    );
    assert_commands_decode(&s, &after).await;
    drop(registry);
}

/// The entity key (the record key) of lead `F-i`.
fn records_key(i: usize) -> String {
    common::lead(&format!("F-{i}"), &format!("f{i}@x.io"))
        .entity_key()
        .unwrap()
}
