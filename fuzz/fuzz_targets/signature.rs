//! The intake's signature check (`ingest::signature`): arbitrary header values, secrets, bodies and
//! clocks.
//!
//! Properties:
//! - `verify` never panics, whatever the header (any text: empty parts, `=` inside values, huge or
//!   negative timestamps, odd-length or non-hex tags).
//! - What `sign` makes verifies with the same secret and body exactly while the clock is within the
//!   tolerance of its timestamp, and is `Stale` outside it; with another body or another secret (one
//!   bit changed) it is a `Mismatch`; an extra unknown scheme (`v0=`) or a second, wrong `v1=` does not change that.
//! - No forgery: when an arbitrary header verifies, it carries the very tag `sign` makes for one of
//!   its `t=` values.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use onceflow::ingest::signature::{SignatureError, TOLERANCE, sign, verify};

#[derive(Debug, Arbitrary)]
struct Input {
    secret: Vec<u8>,
    body: Vec<u8>,
    header: String,
    timestamp: i64,
    /// Seconds between the signature and the check.
    skew: i64,
}

fuzz_target!(|input: Input| {
    let Input {
        secret,
        body,
        header,
        timestamp,
        skew,
    } = input;
    let now = timestamp.saturating_add(skew);
    let within = now.saturating_sub(timestamp).unsigned_abs() <= TOLERANCE.as_secs();

    // Arbitrary headers: no panic; a success is never a forgery.
    if verify(&secret, Some(&header), &body, now).is_ok() {
        let lower = header.to_ascii_lowercase();
        let forged = !lower
            .split(',')
            .filter_map(|p| p.trim().strip_prefix("t="))
            .any(|t| {
                t.parse::<i64>().is_ok_and(|t| {
                    let signed = sign(&secret, t, &body);
                    let tag = signed.split_once(",v1=").map_or("", |(_, tag)| tag);
                    lower.contains(tag)
                })
            });
        assert!(
            !forged,
            "a header without the right tag verified: {header:?}"
        );
    }
    assert_eq!(
        verify(&secret, None, &body, now),
        Err(SignatureError::Missing)
    );

    // Genuine signatures.
    let signed = sign(&secret, timestamp, &body);
    let expected = if within {
        Ok(())
    } else {
        Err(SignatureError::Stale(now.saturating_sub(timestamp)))
    };
    assert_eq!(
        verify(&secret, Some(&signed), &body, now),
        expected,
        "{signed}"
    );
    let decorated = format!(" {signed} ,v0=ignored,v1={}", "ab".repeat(32));
    assert_eq!(
        verify(&secret, Some(&decorated), &body, now),
        expected,
        "{decorated}"
    );

    if within {
        let mut tampered = body.clone();
        tampered.push(b'x');
        assert_eq!(
            verify(&secret, Some(&signed), &tampered, now),
            Err(SignatureError::Mismatch)
        );
        // Another secret: the first byte flipped (not a zero appended, which HMAC's key padding
        // cannot tell apart).
        let mut other = secret.clone();
        match other.first_mut() {
            Some(b) => *b ^= 1,
            None => other.push(1),
        }
        assert_eq!(
            verify(&other, Some(&signed), &body, now),
            Err(SignatureError::Mismatch),
            "another secret verified"
        );
    }
});
