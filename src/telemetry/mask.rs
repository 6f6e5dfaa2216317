//! PII masking for free text that reaches logs or error bodies: e-mail addresses and phone numbers.
//!
//! Invariants:
//! - An address keeps its first character and its domain (`a***@example.com`), enough to debug a
//!   typo in a domain, never enough to identify the person; a phone number keeps its last two digits.
//! - Masking is applied where text leaves the process (log fields, HTTP error details); event data
//!   itself is never logged.

use std::sync::LazyLock;

use regex::Regex;

// Both patterns are literals checked by the unit tests; a failure to compile is a programming error
// caught by any test run, so falling back to a never-matching pattern cannot hide PII in practice.
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"[^\s@"'`<>(),;:\[\]]+@[^\s@"'`<>(),;:\[\]]+\.[^\s@"'`<>(),;:\[\]]+"#)
        .unwrap_or_else(|_| never())
});
static PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\+?\d[\d\s().\-]{5,}\d").unwrap_or_else(|_| never()));

fn never() -> Regex {
    // `[^\s\S]` matches nothing; this literal compiles.
    Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!())
}

/// `text` with e-mail addresses and phone numbers masked.
pub fn mask_pii(text: &str) -> String {
    let text = EMAIL.replace_all(text, |c: &regex::Captures<'_>| {
        let m = &c[0];
        let (local, domain) = m.split_once('@').unwrap_or((m, ""));
        let first: String = local.chars().take(1).collect();
        format!("{first}***@{domain}")
    });
    PHONE
        .replace_all(&text, |c: &regex::Captures<'_>| {
            let digits: Vec<char> = c[0].chars().filter(char::is_ascii_digit).collect();
            // Fewer than 7 digits is a number, not a phone (amounts, years, ids).
            if digits.len() < 7 {
                return c[0].to_string();
            }
            format!(
                "***{}",
                digits[digits.len() - 2..].iter().collect::<String>()
            )
        })
        .into_owned()
}

/// Field names whose values identify a person, masked whole in [`mask_json`].
pub const PERSONAL_FIELDS: [&str; 9] = [
    "email",
    "first_name",
    "last_name",
    "phone",
    "customer_email",
    "recipient_email",
    "author_email",
    "to",
    "company",
];

/// `value` with PII masked for display (operator previews): the values of
/// [`PERSONAL_FIELDS`] keep their first character (an e-mail its domain too, a phone number its
/// last two digits), every other string
/// goes through [`mask_pii`], and a string that holds a JSON object (a webhook body) is masked as
/// JSON.
pub fn mask_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let masked = match v {
                        Value::String(s) if PERSONAL_FIELDS.contains(&k.as_str()) => {
                            Value::String(mask_personal(s))
                        }
                        other => mask_json(other),
                    };
                    (k.clone(), masked)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask_json).collect()),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(inner @ Value::Object(_)) => Value::String(mask_json(&inner).to_string()),
            _ => Value::String(mask_pii(s)),
        },
        other => other.clone(),
    }
}

/// A personal value: an e-mail keeps its first character and domain, a phone number its last two
/// digits, anything else its first character.
fn mask_personal(s: &str) -> String {
    let masked = mask_pii(s);
    if masked != s {
        // An e-mail address or a phone number: masked the way logs mask them.
        return masked;
    }
    let first: String = s.chars().take(1).collect();
    if first.is_empty() {
        String::new()
    } else {
        format!("{first}***")
    }
}

/// An e-mail address masked on its own (for a structured log field).
pub fn mask_email(email: &str) -> String {
    mask_pii(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_phones_are_masked() {
        assert_eq!(
            mask_pii("lead ada.lovelace@example.com failed"),
            "lead a***@example.com failed"
        );
        assert_eq!(
            mask_pii("\"to\":\"Bob@Mail.co.uk\""),
            "\"to\":\"B***@Mail.co.uk\""
        );
        assert_eq!(mask_pii("call +44 20 7946 0958 now"), "call ***58 now");
        assert_eq!(mask_pii("phone 555-0100-123"), "phone ***23");
        assert_eq!(mask_pii("jörg.müller@exämple.de"), "j***@exämple.de");
        assert_eq!(
            mask_pii("unknown type `ada@example.com`;"),
            "unknown type `a***@example.com`;"
        );
    }

    #[test]
    fn json_previews_mask_personal_fields_and_free_text_and_nested_bodies() {
        let v = serde_json::json!({
            "email": "ada@example.com", "first_name": "Ada", "phone": "+44 20 7946 0958",
            "note": "call bob@x.io", "amount_minor": 1999,
            "body_json": "{\"data\":{\"last_name\":\"Lovelace\",\"email\":\"ada@example.com\"}}"
        });
        let text = mask_json(&v).to_string();
        for leak in ["ada@", "Ada\"", "7946", "bob@", "Lovelace"] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
        assert!(
            text.contains("a***@example.com") && text.contains("1999"),
            "{text}"
        );
    }

    #[test]
    fn ordinary_numbers_are_left_alone() {
        assert_eq!(
            mask_pii("amount 1999 in 2026, offset 12345"),
            "amount 1999 in 2026, offset 12345"
        );
        assert_eq!(
            mask_pii("data.tags[1]: expected a string"),
            "data.tags[1]: expected a string"
        );
    }
}
