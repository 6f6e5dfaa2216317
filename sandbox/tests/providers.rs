//! The sandboxes behave like the providers where an exactly-once pipeline depends on it: each test
//! talks HTTP to a sandbox served in-process on an ephemeral port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use onceflow_sandbox::{Faults, Provider, RateLimit, Running, Sandbox, SandboxConfig};
use serde_json::{Value as Json, json};
use sha2::Sha256;

const KEY: &str = "k";

async fn start(faults: &[(Provider, Faults)]) -> (Running, String) {
    let r = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: KEY.into(),
        faults: faults.iter().cloned().collect(),
        seed: Some(7),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", r.addr);
    (r, base)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn invoice(base: &str, key: Option<&str>, amount: u32) -> reqwest::Response {
    let mut req = client()
        .post(format!("{base}/billing/v1/invoices"))
        .bearer_auth(KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "customer=cus_1&currency=eur&amount={amount}&description=Pro"
        ));
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn stripe_replays_a_key_byte_for_byte_refuses_other_parameters_and_forgets_after_24_hours() {
    let (r, base) = start(&[]).await;
    let first = invoice(&base, Some("key-1"), 1999).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();
    let again = invoice(&base, Some("key-1"), 1999).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.bytes().await.unwrap(),
        first_body,
        "the stored answer, byte for byte"
    );
    assert_eq!(r.sandbox.effects(Provider::Billing).len(), 1, "one invoice");

    let other = invoice(&base, Some("key-1"), 2999).await;
    assert_eq!(other.status(), 400);
    let e: Json = other.json().await.unwrap();
    assert_eq!(e["error"]["type"], "idempotency_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("key-1"));

    r.sandbox.advance_clock(Duration::from_secs(25 * 3_600));
    assert_eq!(invoice(&base, Some("key-1"), 2999).await.status(), 200);
    assert_eq!(
        r.sandbox.effects(Provider::Billing).len(),
        2,
        "an expired key is a new invoice"
    );
    assert_eq!(invoice(&base, None, 1999).await.status(), 200);
    assert_eq!(invoice(&base, None, 1999).await.status(), 200);
    assert_eq!(
        r.sandbox.effects(Provider::Billing).len(),
        4,
        "no key, no deduplication"
    );
}

#[tokio::test]
async fn stripe_answers_409_to_a_key_in_flight_and_validates_like_stripe() {
    let slow = Faults {
        latency_ms: Some((400, 400)),
        ..Faults::default()
    };
    let (r, base) = start(&[(Provider::Billing, slow)]).await;
    let (a, b) = tokio::join!(invoice(&base, Some("same"), 1999), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        invoice(&base, Some("same"), 1999).await
    });
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let conflict: Json = b.json().await.unwrap();
    assert_eq!(
        conflict["error"]["code"], "idempotency_key_in_use",
        "{conflict}"
    );
    assert_eq!(r.sandbox.effects(Provider::Billing).len(), 1);

    let bad = client()
        .post(format!("{base}/billing/v1/invoices"))
        .bearer_auth(KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("idempotency-key", "v")
        .body("customer=cus_1&currency=xts&amount=1999")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let e: Json = bad.json().await.unwrap();
    assert_eq!(e["error"]["param"], "currency");
    // A refused request saves no result: the key is free for a valid one.
    assert_eq!(invoice(&base, Some("v"), 1999).await.status(), 200);
}

#[tokio::test]
async fn resend_honours_keys_and_sendgrid_sends_every_call() {
    let (r, base) = start(&[]).await;
    let mail = json!({"from": "a@x.io", "to": ["b@x.io"], "subject": "hi", "text": "x"});
    let send = |body: Json, key: &'static str| {
        let base = base.clone();
        async move {
            client()
                .post(format!("{base}/email/emails"))
                .bearer_auth(KEY)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let a: Json = send(mail.clone(), "m1").await.json().await.unwrap();
    let b: Json = send(mail.clone(), "m1").await.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    let other = send(
        json!({"from": "a@x.io", "to": "c@x.io", "subject": "other"}),
        "m1",
    )
    .await;
    assert_eq!(other.status(), 409);
    assert_eq!(
        other.json::<Json>().await.unwrap()["name"],
        "invalid_idempotent_request"
    );
    assert_eq!(r.sandbox.effects(Provider::Email).len(), 1);

    let grid = json!({"personalizations": [{"to": [{"email": "b@x.io"}]}], "from": {"email": "a@x.io"},
                      "template_id": "welcome"});
    for _ in 0..2 {
        let resp = client()
            .post(format!("{base}/email/v3/mail/send"))
            .bearer_auth(KEY)
            .header("idempotency-key", "ignored")
            .json(&grid)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        assert!(resp.headers().contains_key("x-message-id"));
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    assert_eq!(
        r.sandbox.effects(Provider::Email).len(),
        3,
        "SendGrid: two calls, two e-mails"
    );
}

#[tokio::test]
async fn analytics_deduplicates_message_ids_and_the_crm_upserts_by_email() {
    let (r, base) = start(&[]).await;
    let basic = STANDARD.encode(format!("{KEY}:"));
    for _ in 0..2 {
        let resp = client()
            .post(format!("{base}/analytics/v1/track"))
            .header("authorization", format!("Basic {basic}"))
            .json(&json!({"messageId": "msg-1", "userId": "u", "event": "LeadCaptured"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(r.sandbox.effects(Provider::Analytics).len(), 1);
    let outcomes: Vec<String> = r
        .sandbox
        .calls(Provider::Analytics)
        .iter()
        .map(|c| c.outcome.clone())
        .collect();
    assert_eq!(outcomes, ["ok", "deduplicated"]);
    let counts: Json = client()
        .get(format!("{base}/_counts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        counts["analytics"],
        json!({"effects": 1, "calls": {"ok": 1, "deduplicated": 1}}),
        "{counts}"
    );

    let upsert = |first: &'static str| {
        let base = base.clone();
        async move {
            let body = json!({"inputs": [{"idProperty": "email", "id": "Ada@X.io",
                              "properties": {"firstname": first}}]});
            let resp = client()
                .post(format!("{base}/crm/crm/v3/objects/contacts/batch/upsert"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            resp.json::<Json>().await.unwrap()
        }
    };
    let a = upsert("Ada").await;
    let b = upsert("Ada").await;
    let c = upsert("Augusta").await;
    assert_eq!(a["results"][0]["new"], true);
    assert_eq!(b["results"][0]["id"], a["results"][0]["id"], "one contact");
    assert_eq!(c["results"][0]["properties"]["firstname"], "Augusta");
    let kinds: Vec<String> = r
        .sandbox
        .effects(Provider::Crm)
        .iter()
        .map(|e| e.kind.clone())
        .collect();
    assert_eq!(
        kinds,
        ["contact_created", "contact_updated"],
        "an unchanged upsert is no effect"
    );
}

fn sign(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn the_webhook_receiver_checks_signatures_and_deduplicates_ids() {
    let (r, base) = start(&[]).await;
    let secret = onceflow_sandbox::DEFAULT_WEBHOOK_SECRET;
    let now = jiff::Timestamp::now().as_second();
    let body = r#"{"event_id":"e"}"#;
    let post = |sig: String, ts: i64, id: &'static str| {
        let base = base.clone();
        async move {
            client()
                .post(format!("{base}/webhook/hooks/1"))
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig)
                .header("x-onceflow-hop", "2")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(
            format!("v1,bogus {}", sign(secret, "w1", now, body)),
            now,
            "w1"
        )
        .await,
        200
    );
    assert_eq!(post(sign(secret, "w1", now, body), now, "w1").await, 200);
    assert_eq!(
        post(sign("whsec_b3RoZXI=", "w2", now, body), now, "w2").await,
        401
    );
    assert_eq!(
        post(sign(secret, "w3", now - 600, body), now - 600, "w3").await,
        401,
        "stale"
    );
    let effects = r.sandbox.effects(Provider::Webhook);
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].detail["headers"]["x-onceflow-hop"], "2");
    assert_eq!(effects[0].detail["path"], "hooks/1");
}

async fn track(base: &str, id: usize) -> Result<reqwest::Response, reqwest::Error> {
    let basic = STANDARD.encode(format!("{KEY}:"));
    client()
        .post(format!("{base}/analytics/v1/track"))
        .header("authorization", format!("Basic {basic}"))
        .header("x-onceflow-command-id", format!("c{id}"))
        .json(&json!({"messageId": format!("m{id}"), "userId": "u", "event": "E"}))
        .send()
        .await
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_rate_headers() {
    let limit = Faults {
        // One token a second: the six calls would have to take 3 s for the last three to pass
        // (at 5 a second they did, once, in `make test` on a loaded machine).
        rate_limit: Some(RateLimit {
            per_second: 1,
            burst: 3,
        }),
        ..Faults::default()
    };
    let (r, base) = start(&[(Provider::Analytics, limit)]).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let resp = track(&base, i).await.unwrap();
        assert!(resp.headers().contains_key("x-ratelimit-remaining"));
        if resp.status() == 429 {
            assert!(
                resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
            assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "the burst");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    assert_eq!(
        r.sandbox.effects(Provider::Analytics).len(),
        statuses.iter().filter(|s| **s == 200).count()
    );
}

#[tokio::test]
async fn storms_bursts_lost_answers_and_resets_do_what_they_say() {
    let (r, base) = start(&[]).await;
    r.sandbox.set_faults(
        Provider::Analytics,
        Faults {
            storm: true,
            ..Faults::default()
        },
    );
    assert_eq!(track(&base, 1).await.unwrap().status(), 503);
    r.sandbox.set_faults(
        Provider::Analytics,
        Faults {
            burst_5xx: 2,
            ..Faults::default()
        },
    );
    let s: Vec<u16> = [
        track(&base, 2).await.unwrap().status().as_u16(),
        track(&base, 3).await.unwrap().status().as_u16(),
        track(&base, 4).await.unwrap().status().as_u16(),
    ]
    .to_vec();
    assert_eq!(s, [503, 503, 200]);
    assert_eq!(
        r.sandbox.effects(Provider::Analytics).len(),
        1,
        "5xx perform nothing"
    );

    r.sandbox.set_faults(
        Provider::Analytics,
        Faults {
            p_timeout_after_effect: 1.0,
            hang_ms: 200,
            ..Faults::default()
        },
    );
    let lost = track(&base, 5).await;
    assert!(lost.is_err(), "no answer: {lost:?}");
    assert_eq!(
        r.sandbox.effects(Provider::Analytics).len(),
        2,
        "but the effect happened"
    );
    r.sandbox.set_faults(
        Provider::Analytics,
        Faults {
            p_reset: 1.0,
            ..Faults::default()
        },
    );
    assert!(track(&base, 6).await.is_err());
    assert_eq!(
        r.sandbox.effects(Provider::Analytics).len(),
        2,
        "a reset performs nothing"
    );
    let outcomes: Vec<(String, u16)> = r
        .sandbox
        .calls(Provider::Analytics)
        .iter()
        .map(|c| (c.outcome.clone(), c.status))
        .collect();
    assert_eq!(
        &outcomes[4..],
        [("timeout_after_effect".into(), 0), ("reset".into(), 0)]
    );
}

#[tokio::test]
async fn every_refusal_is_json_even_the_frameworks() {
    let (_r, base) = start(&[]).await;
    let c = client();
    let cases = [
        c.get(format!("{base}/nope")).send().await.unwrap(),
        c.get(format!("{base}/billing/v1/invoices"))
            .send()
            .await
            .unwrap(),
        c.post(format!("{base}/billing/v1/invoices"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap(),
        c.post(format!("{base}/email/emails"))
            .bearer_auth(KEY)
            .body("{not json")
            .send()
            .await
            .unwrap(),
        c.post(format!("{base}/billing/v1/invoices"))
            .bearer_auth(KEY)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        c.put(format!("{base}/_faults/crm"))
            .body("{\"storm\": \"yes\"}")
            .send()
            .await
            .unwrap(),
    ];
    let want = [404, 405, 401, 400, 400, 422];
    for (resp, status) in cases.into_iter().zip(want) {
        assert_eq!(resp.status().as_u16(), status);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "{status}: {ct}");
        resp.json::<Json>().await.unwrap();
    }
}
