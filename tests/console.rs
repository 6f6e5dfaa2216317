//! The operator console against the real broker: its protection (401 without the token, nothing
//! but /healthz served, a cross-site POST refused, no secret on any page), and an operator's walk
//! through it in headless Chromium (tests/console/e2e.mjs): see the poisoned adapter's dead
//! letters and reason, open one (masked), replay it through the dry run and the reason prompt, and
//! the processor turns it into exactly one command.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{await_caught_up, create_plan, outbox_event_ids, publish};
use onceflow::adapters::{self, Adapter, AdapterError};
use onceflow::config::{AdapterSettings, SecretRef, Settings};
use onceflow::kafka::names::{Names, Stage};
use onceflow::model::Event;
use onceflow::model::command::Command as OnceflowCommand;
use onceflow::processor::Processor;
use tokio::sync::watch;

const TOKEN: &str = "console-test-token-7d1f";

/// The CRM adapter, refusing `bad-…` forms until fixed.
struct Picky {
    crm: Arc<dyn Adapter>,
    fixed: Arc<AtomicBool>,
}

impl Adapter for Picky {
    fn name(&self) -> &str {
        "crm"
    }

    fn decide(&self, event: &Event) -> Result<Vec<OnceflowCommand>, AdapterError> {
        let form = event.data["form_id"].as_str().unwrap_or("").to_string();
        if form.starts_with("bad") && !self.fixed.load(Ordering::SeqCst) {
            return Err(AdapterError::Permanent {
                reason: format!("form {form} is not mapped to a CRM pipeline"),
            });
        }
        self.crm.decide(event)
    }
}

fn lead(id: &str, email: &str, form: &str) -> Event {
    let mut e = common::lead(id, email);
    e.data.insert("form_id".into(), serde_json::json!(form));
    e.data
        .insert("phone".into(), serde_json::json!("+44 20 7946 0958"));
    e.data
        .insert("first_name".into(), serde_json::json!("Philippa"));
    e
}

fn inputs(s: &Settings) -> Vec<String> {
    let n = Names::new(s);
    let mut t = s.topics.inputs.clone();
    t.extend((1..=s.retry.tiers.len()).map(|i| n.retry("crm", Stage::Process, i)));
    t
}

fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// A console for `s` on an ephemeral port; its base URL.
async fn console(s: &Settings) -> String {
    let mut s = s.clone();
    s.console.token = Some(SecretRef::Value(TOKEN.into()));
    let router = onceflow::console::build(&s).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(onceflow::console::serve(
        listener,
        router,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_but_healthz_without_the_token_and_no_cross_site_post() {
    let s = common::settings();
    create_plan(&s).await;
    let base = console(&s).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in [
        "/",
        "/audit",
        "/dlq/crm/process",
        "/api/overview",
        "/api/audit",
        "/openapi.json",
        "/api/replays/x",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body = r.text().await.unwrap();
        if path.starts_with("/api/") || path == "/openapi.json" {
            let j: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(j["error"], "unauthorized", "{path}");
        } else {
            assert!(
                body.contains("Console token"),
                "{path} shows the login form"
            );
        }
    }
    let wrong = http
        .get(format!("{base}/api/overview"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = http
        .get(format!("{base}/api/overview"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = ok.status();
    assert_eq!(status, 200, "{}", ok.text().await.unwrap_or_default());
    let doc: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/replays"]["post"].is_object());

    // Log in like the page does; the cookie is not the token.
    let login = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && !cookie.contains(TOKEN),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{base}/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains(TOKEN), "a page shows the token");
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();

    let replay = serde_json::json!({"adapter": "crm", "stage": "process"});
    let post = |origin: Option<&str>, site: Option<&str>, token: Option<&str>| {
        let mut r = http
            .post(format!("{base}/api/replays"))
            .header("cookie", &session)
            .json(&replay);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(s) = site {
            r = r.header("sec-fetch-site", s);
        }
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        r.send()
    };
    let host = base.trim_start_matches("http://").to_string();
    for (origin, site, token, want) in [
        (Some("https://evil.example"), None, Some(csrf.as_str()), 403),
        (None, Some("cross-site"), Some(csrf.as_str()), 403),
        (Some(base.as_str()), Some("same-origin"), None, 403),
        (
            Some(base.as_str()),
            Some("same-origin"),
            Some("forged"),
            403,
        ),
        (
            Some(base.as_str()),
            Some("same-origin"),
            Some(csrf.as_str()),
            200,
        ),
    ] {
        let r = post(origin, site, token).await.unwrap();
        assert_eq!(
            r.status(),
            want,
            "origin {origin:?} site {site:?} csrf {token:?} (host {host})"
        );
        let j: serde_json::Value = r.json().await.unwrap();
        if want == 403 {
            assert_eq!(j["error"], "forbidden");
        } else {
            assert_eq!(j["dry_run"], true);
        }
    }
    // A form posted from elsewhere without the CSRF field is refused too.
    let form = http
        .post(format!("{base}/replays"))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("adapter", "crm"),
            ("stage", "process"),
            ("reason", "x"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 403);
    // Every refusal is JSON under /api, including the framework's own.
    let bad = http
        .post(format!("{base}/api/replays"))
        .bearer_auth(TOKEN)
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<serde_json::Value>().await.unwrap()["error"],
        "bad_request"
    );
    for path in [
        "/api/dlq/%ff/process",
        "/api/dlq/crm/process/%ff/1",
        "/api/replays/%ff",
    ] {
        let bad = http
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400, "{path}");
        let j: serde_json::Value = bad.json().await.unwrap();
        assert_eq!(j["error"], "bad_request", "{path}: {j}");
    }
    let method = http
        .delete(format!("{base}/api/audit"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(method.status(), 405);
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_a_dead_letter_in_the_browser_and_it_becomes_one_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = Command::new(root.join("deploy/local/browser-env"))
        .output()
        .unwrap();
    assert!(
        env.status.success(),
        "deploy/local/browser-env: {}",
        String::from_utf8_lossy(&env.stderr)
    );
    let chromium = String::from_utf8_lossy(&env.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();

    let s = common::settings();
    create_plan(&s).await;
    let names = Names::new(&s);
    let fixed = Arc::new(AtomicBool::new(false));
    let mut events: Vec<Event> = (0..5)
        .map(|i| lead(&format!("G-{i}"), &format!("good.{i}@x.io"), "contact"))
        .collect();
    events.extend((0..3).map(|i| lead(&format!("P-{i}"), &format!("philippa.{i}@x.io"), "bad-P")));
    publish(&s, events).await;
    let picky = Picky {
        crm: adapters::build("crm", &AdapterSettings::default()).unwrap(),
        fixed: Arc::clone(&fixed),
    };
    let processor = Processor::new(&s, Arc::new(picky)).unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move { processor.run(stopped).await.unwrap() });
    await_caught_up(
        &s,
        &names.group("crm", Stage::Process),
        &inputs(&s),
        Duration::from_secs(90),
    )
    .await;
    fixed.store(true, Ordering::SeqCst); // the operator mapped the form

    let base = console(&s).await;
    let shots = std::env::var("ONCEFLOW_SCREENSHOTS").ok();
    let mut cmd = Command::new("node");
    cmd.arg(root.join("tests/console/e2e.mjs"))
        .env("CONSOLE_URL", &base)
        .env("CONSOLE_TOKEN", TOKEN)
        .env("CHROMIUM", &chromium)
        .env("EXPECT_DLQ", "3")
        .env("FORBIDDEN", "philippa.,Philippa,7946 0958,+44 20");
    if let Some(dir) = &shots {
        cmd.env("SCREENSHOTS", dir);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "e2e.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let replayed = result["replayed_event"].as_str().unwrap().to_string();

    await_caught_up(
        &s,
        &names.group("crm", Stage::Process),
        &inputs(&s),
        Duration::from_secs(90),
    )
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let ids = outbox_event_ids(&s, &names.outbox("crm")).await;
    assert_eq!(
        ids.iter().filter(|id| **id == replayed).count(),
        1,
        "one command for the replayed event"
    );
    assert_eq!(
        ids.len(),
        6,
        "5 good events and the one replayed; the other 2 still wait in the DLQ"
    );
    assert!(common::doubles(&ids).is_empty());
    common::cleanup_plan(&s).await;
}
