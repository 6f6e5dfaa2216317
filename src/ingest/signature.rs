//! Stripe-style request signatures: `X-Onceflow-Signature: t=<unix seconds>,v1=<hex>` where the hex
//! is HMAC-SHA256 of `"<t>.<raw body>"` under the source's secret.
//!
//! Invariants:
//! - The comparison is constant-time (`Mac::verify_slice`); several `v1` entries are accepted, so a
//!   sender can roll its secret by signing with both for a while.
//! - A timestamp further than the tolerance (5 minutes) from now, in either direction, is refused:
//!   a captured request cannot be replayed later.
//! - The body is verified byte for byte as received, before it is parsed.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const HEADER: &str = "x-onceflow-signature";

/// How far a signature's timestamp may be from now.
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("missing X-Onceflow-Signature header")]
    Missing,
    /// The header is not `t=<unix>,v1=<hex>`.
    #[error("malformed X-Onceflow-Signature header: expected t=<unix seconds>,v1=<hex>")]
    Malformed,
    /// The timestamp is outside the tolerance.
    #[error("signature timestamp is {0} s away from now (tolerance 300 s)")]
    Stale(i64),
    /// No `v1` matches.
    #[error("signature does not match the body")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value a sender puts on `body` at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Verifies `header` (the signature header's value, if any) over `body` at `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", hex_tag)) => candidates.push(hex_tag),
            // Other schemes (v0, future versions) are ignored, as Stripe does.
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now.saturating_sub(timestamp);
    if skew.unsigned_abs() > TOLERANCE.as_secs() {
        return Err(SignatureError::Stale(skew));
    }
    let expected = mac(secret, timestamp, body);
    let matches = candidates
        .iter()
        .filter_map(|c| hex::decode(c).ok())
        .any(|tag| expected.clone().verify_slice(&tag).is_ok());
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_428_000;

    #[test]
    fn a_signed_body_verifies() {
        let h = sign(b"demo-secret", NOW, b"{\"a\":1}");
        assert!(h.starts_with(&format!("t={NOW},v1=")));
        assert_eq!(verify(b"demo-secret", Some(&h), b"{\"a\":1}", NOW), Ok(()));
        assert_eq!(
            verify(b"demo-secret", Some(&h), b"{\"a\":1}", NOW + 299),
            Ok(())
        );
    }

    #[test]
    fn the_known_answer_matches_an_independent_hmac() {
        // python3 -c "import hmac,hashlib;print(hmac.new(b'demo-secret',b'1795428000.{}',hashlib.sha256).hexdigest())"
        assert_eq!(
            sign(b"demo-secret", NOW, b"{}"),
            "t=1795428000,v1=ab368d17913c94496890222304c69f1282a4f3ce9b425ad21414816fabe8c0af"
        );
    }

    #[test]
    fn tampering_staleness_and_garbage_are_refused() {
        let h = sign(b"s", NOW, b"body");
        assert_eq!(
            verify(b"s", Some(&h), b"bodY", NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", Some(&h), b"body", NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"s", Some(&h), b"body", NOW + 301),
            Err(SignatureError::Stale(301))
        );
        assert_eq!(
            verify(b"s", Some(&h), b"body", NOW - 301),
            Err(SignatureError::Stale(-301))
        );
        assert_eq!(
            verify(b"s", None, b"body", NOW),
            Err(SignatureError::Missing)
        );
        for bad in ["", "v1=00", "t=abc,v1=00", "t=1", "garbage"] {
            assert!(verify(b"s", Some(bad), b"body", NOW).is_err(), "{bad}");
        }
        assert_eq!(
            verify(b"s", Some(&format!("t={NOW},v1=zz")), b"body", NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let good = sign(b"new", NOW, b"x");
        let old = sign(b"old", NOW, b"x");
        let both = format!("{old},{}", good.split_once(',').unwrap().1);
        assert_eq!(verify(b"new", Some(&both), b"x", NOW), Ok(()));
        assert_eq!(verify(b"old", Some(&both), b"x", NOW), Ok(()));
    }
}
