//! Deterministic identities: the event id (the idempotency key of an event), the command id, and
//! the entity keys that pick a partition.
//!
//! Invariants:
//! - The same source event always gets the same event id, however often and through whichever
//!   path (HTTP or the Rust producer) it arrives: it is a UUIDv5 of (source, source event id).
//! - When a sender gives no event id, the id is a UUIDv5 of (source, type, canonical payload,
//!   `occurred_at` truncated to whole seconds): a retry of the same payload dedupes, a genuinely
//!   new event a second later does not. The canonical payload is JSON with sorted keys and no
//!   insignificant whitespace.
//! - Entity keys never carry PII in clear: e-mail keys are the SHA-256 of the normalised address.
//! - Normalisation (NFKC, trim, lowercase) is fixed; changing it re-partitions every entity and
//!   breaks deduplication across the change, so the unit tests pin it.

use sha1::Sha1;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

/// UUIDv5 namespace of event ids (a random UUID fixed forever).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x5b0c_6f3e_9a41_4f7d_8d2e_61c4_0f1a_b7e2);
/// UUIDv5 namespace of command ids.
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x0e7d_29a4_c35b_4b8e_a1f6_93d2_57e8_4c10);

/// The event id of a source event the sender identified.
pub fn event_id(source: &str, source_event_id: &str) -> String {
    // The separator cannot occur in a source name, so ("a\u{0}b", "c") and ("a", "b\u{0}c") differ.
    uuid_v5(
        &EVENT_NAMESPACE,
        &[source.as_bytes(), b"\0", source_event_id.as_bytes()],
    )
}

/// The UUIDv5 (RFC 9562) of the name that is `parts` one after the other, hyphenated in lower
/// case: what `Uuid::new_v5(namespace, name).to_string()` gives, with RustCrypto's SHA-1 (the
/// CPU's SHA instructions where it has them) and without building the name or going through
/// `Display`.
fn uuid_v5(namespace: &Uuid, parts: &[&[u8]]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(namespace.as_bytes());
    for part in parts {
        sha1.update(part);
    }
    let digest = sha1.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_owned()
}

/// The source event id derived for a sender that gave none: a digest of the canonical payload and
/// the second it occurred in.
pub fn derived_source_event_id(
    event_type: &str,
    data: &serde_json::Value,
    occurred_at_ms: i64,
) -> String {
    let seconds = occurred_at_ms.div_euclid(1000);
    let canonical = canonical_json(data);
    let digest = Sha256::digest(format!("{event_type}\u{0}{seconds}\u{0}{canonical}").as_bytes());
    format!("derived-{}", hex::encode(&digest[..16]))
}

/// The command id of the `index`-th command an adapter derived from an event: the idempotency key
/// the dispatcher sends to the external system.
pub fn command_id(event_id: &str, adapter: &str, index: usize) -> String {
    let index = index.to_string();
    uuid_v5(
        &COMMAND_NAMESPACE,
        &[
            event_id.as_bytes(),
            b"\0",
            adapter.as_bytes(),
            b"\0",
            index.as_bytes(),
        ],
    )
}

/// JSON with object keys sorted and no whitespace. (serde_json's map keeps keys sorted unless the
/// `preserve_order` feature is on; sorting here does not depend on that.)
pub fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        scalar => scalar.to_string(),
    }
}

/// The normalised form of an e-mail address: NFKC (so full-width and composed forms agree), trimmed
/// of Unicode white space, lowercased (the whole address: providers treat the local part
/// case-insensitively in practice, and a CRM dedupes that way).
///
/// An ASCII address skips the NFKC pass, which leaves every ASCII character as it is: the same
/// result without building the string char by char.
pub fn normalize_email(email: &str) -> String {
    if email.is_ascii() {
        return email.trim().to_ascii_lowercase();
    }
    email.nfkc().collect::<String>().trim().to_lowercase()
}

/// Entity key of a person known by e-mail: hex SHA-256 of the normalised address.
pub fn email_key(email: &str) -> String {
    const_hex::encode(Sha256::digest(normalize_email(email).as_bytes()))
}

/// Whether a (normalised) address looks deliverable enough to accept: one `@`, non-empty local
/// part, a dotted domain, no white space.
pub fn plausible_email(normalized: &str) -> bool {
    let Some((local, domain)) = normalized.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !normalized.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn email_normalisation_is_pinned() {
        assert_eq!(normalize_email("  Ada@Example.COM \t"), "ada@example.com");
        // Composed and decomposed accents agree.
        assert_eq!(
            normalize_email("Jos\u{0065}\u{0301}@example.com"),
            normalize_email("Jos\u{00e9}@example.com")
        );
        // Full-width letters and at-sign (as typed on some mobile keyboards) fold to ASCII.
        assert_eq!(normalize_email("ＡＤＡ＠example.com"), "ada@example.com");
        // Non-breaking and ideographic spaces are white space too.
        assert_eq!(
            normalize_email("\u{00a0}ada@example.com\u{3000}"),
            "ada@example.com"
        );
        // German sharp s is not folded to "ss" (lowercase, not case folding).
        assert_eq!(normalize_email("STRAẞE@example.de"), "straße@example.de");
        // Pinned digest (computed independently with Python's hashlib): changing normalisation or
        // hashing would re-partition every lead.
        assert_eq!(
            email_key(" ADA@example.com"),
            "b5fc85e55755f9e0d030a10ab4429b6b2944855f9a0d60077fe832becbc41d72"
        );
    }

    #[test]
    fn the_ascii_shortcut_is_the_full_normalisation() {
        let full = |e: &str| e.nfkc().collect::<String>().trim().to_lowercase();
        // Every ASCII character, alone, amid an address and at its ends.
        for c in (0u8..=127).map(char::from) {
            for e in [
                c.to_string(),
                format!("A{c}b@Example.io"),
                format!("{c}{c}Ada@x.io{c}"),
            ] {
                assert!(e.is_ascii());
                assert_eq!(normalize_email(&e), full(&e), "{e:?}");
            }
        }
    }

    #[test]
    fn event_ids_are_deterministic_and_separated() {
        assert_eq!(event_id("typeform", "f-1"), event_id("typeform", "f-1"));
        assert_ne!(event_id("typeform", "f-1"), event_id("typeform", "f-2"));
        assert_ne!(event_id("a", "bc"), event_id("ab", "c"));
        // Pinned (Python's uuid.uuid5 gives the same): ids already in Kafka must keep matching new
        // deliveries after an upgrade.
        assert_eq!(
            event_id("demo", "lead-1"),
            "5299580b-3518-53a2-ada8-9caa3a5c9a5c"
        );
    }

    #[test]
    fn derived_ids_ignore_key_order_and_sub_second_time() {
        let a = json!({"email": "a@x.io", "form_id": "f", "extra": {"b": 1, "a": 2}});
        let b = json!({"form_id": "f", "extra": {"a": 2, "b": 1}, "email": "a@x.io"});
        assert_eq!(
            derived_source_event_id("LeadCaptured", &a, 1_700_000_000_123),
            derived_source_event_id("LeadCaptured", &b, 1_700_000_000_999)
        );
        assert_ne!(
            derived_source_event_id("LeadCaptured", &a, 1_700_000_000_123),
            derived_source_event_id("LeadCaptured", &a, 1_700_000_001_000)
        );
        assert_ne!(
            derived_source_event_id("LeadCaptured", &a, 0),
            derived_source_event_id("ContentPublished", &a, 0)
        );
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{ "b" : [1, {"d":1,"c":2}], "a":"x" }"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":"x","b":[1,{"c":2,"d":1}]}"#);
    }

    #[test]
    fn command_ids_differ_per_adapter_and_index() {
        let e = event_id("demo", "1");
        assert_ne!(command_id(&e, "crm", 0), command_id(&e, "email", 0));
        assert_ne!(command_id(&e, "email", 0), command_id(&e, "email", 1));
        assert_eq!(command_id(&e, "crm", 0), command_id(&e, "crm", 0));
        // Pinned (Python's uuid.uuid5 gives the same): the dispatcher's idempotency keys of
        // commands already in the outbox must not change with an upgrade.
        assert_eq!(e, "bb75097b-0131-5a34-a09d-26d6eeceea95");
        assert_eq!(
            command_id(&e, "crm", 0),
            "eb6b4b48-2ee5-5c99-83df-dd299c312580"
        );
        assert_eq!(
            command_id(&e, "analytics", 12),
            "0b4070e2-164f-5229-932d-0f2b22a4671a"
        );
    }

    #[test]
    fn uuid_v5_is_uuids_own() {
        for name in [
            "",
            "a",
            "demo\u{0}lead-1",
            "ünïcødé\u{0}x\u{0}7",
            &"long".repeat(40),
        ] {
            let parts: Vec<&[u8]> = name.as_bytes().chunks(3).collect();
            for ns in [EVENT_NAMESPACE, COMMAND_NAMESPACE] {
                assert_eq!(
                    uuid_v5(&ns, &parts),
                    Uuid::new_v5(&ns, name.as_bytes()).to_string(),
                    "{name:?}"
                );
            }
        }
    }

    #[test]
    fn plausible_emails() {
        assert!(plausible_email("ada@example.com"));
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a@b@c.io",
            "a b@c.io",
            "ada@.com",
            "ada@x.",
        ] {
            assert!(!plausible_email(bad), "{bad}");
        }
    }
}
