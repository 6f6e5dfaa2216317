//! The console's pages: server-rendered HTML (maud), one small inline script for the replay
//! progress, nothing loaded from elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::api::{self, DlqQuery, RecordRef, ReplayRequest};
use super::auth::{self, same};
use super::{App, ConsoleError};
use crate::kafka::names::Names;
use crate::ops::{audit, health};

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header b{color:#fff;margin-right:12px}
main{padding:18px 24px;max-width:1280px}h1{font-size:20px;margin:4px 0 14px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0001}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e6e8ec;vertical-align:top}
th{background:#eef1f5;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b3261e;font-weight:600}.ok{color:#1a7f37}
.muted{color:#6b7280}.pill{display:inline-block;padding:1px 8px;border-radius:10px;background:#eef1f5;font-size:12px}
.pill.open{background:#fde2e1;color:#b3261e}.pill.closed{background:#dcf5e3;color:#1a7f37}.pill.half_open{background:#fff3cd}
pre{background:#fff;padding:12px;border:1px solid #e6e8ec;overflow:auto;font-size:12px}
form.inline{display:inline}input,select,button{font:inherit;padding:4px 8px}
button{background:#1d4ed8;color:#fff;border:0;border-radius:4px;padding:6px 12px;cursor:pointer}
button.secondary{background:#6b7280}.filters{display:flex;gap:8px;flex-wrap:wrap;margin:8px 0 12px}
.card{background:#fff;padding:14px;box-shadow:0 1px 2px #0001;margin-bottom:14px}
.hex{word-break:break-all;max-width:520px}td.record{max-width:560px}";

fn layout(app: &App, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(app.csrf);
                title { (title) " · onceflow console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    b { "onceflow" }
                    a href="/" { "Overview" }
                    a href="/audit" { "Audit log" }
                    span style="flex:1" {}
                    span.muted { "namespace " (app.settings.namespace) }
                    form.inline method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(app.csrf);
                        button.secondary type="submit" { "Log out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login form (also the answer to a request without the token).
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Log in · onceflow console" } style { (PreEscaped(STYLE)) } }
            body {
                header { b { "onceflow" } span { "console" } }
                main {
                    div.card style="max-width:420px" {
                        h1 { "Log in" }
                        @if let Some(e) = error { p.bad { (e) } }
                        form method="post" action="/login" {
                            p { label { "Console token" br; input #token type="password" name="token" autocomplete="off" size="40"; } }
                            button type="submit" { "Log in" }
                        }
                    }
                }
            }
        }
    }
}

/// A page saying what went wrong.
pub fn problem(status: StatusCode, detail: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (status.as_u16()) " · onceflow console" } style { (PreEscaped(STYLE)) } }
            body { main { h1 { (status) } p { (detail) } p { a href="/" { "Back to the overview" } } } }
        }
    }
}

/// `GET /login`.
pub async fn login_page() -> Markup {
    login(None)
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login`: a right token sets the session cookie.
pub async fn login_submit(
    State(app): State<Arc<App>>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            login(Some("send the token in the form")),
        )
            .into_response();
    };
    if !same(&f.token, &app.token) {
        return (
            StatusCode::UNAUTHORIZED,
            login(Some("that is not the console's token")),
        )
            .into_response();
    }
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(Some(&app.session))) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /logout`.
pub async fn logout() -> Response {
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(None)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn reasons(m: &BTreeMap<String, u64>) -> Markup {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    html! {
        @if v.is_empty() { span.muted { "none" } }
        @for (r, n) in v.iter().take(4) { div { span.bad { (n) } " " (r) } }
    }
}

/// `GET /`: every adapter's stages.
pub async fn overview(State(app): State<Arc<App>>) -> Result<Markup, ConsoleError> {
    let stages = health::overview(&app.settings)
        .await
        .map_err(|e| ConsoleError::unavailable(false, e))?;
    Ok(layout(
        &app,
        "Overview",
        html! {
            h1 { "Adapters" }
            table #overview {
                thead { tr {
                    th { "Adapter" } th { "Stage" } th.num { "Lag" } th.num { "Retry tiers" }
                    th.num { "Dead letters to replay" } th { "Dead-lettered, last hour" } th { "Last 24 h" }
                    th { "Breaker" } th.num { "In doubt (24 h)" }
                } }
                tbody {
                    @for s in &stages {
                        tr data-adapter=(s.adapter) data-stage=(s.stage) {
                            td { b { (s.adapter) } }
                            td { (s.stage) }
                            td.num { (s.lag) }
                            td.num { (s.retry_depth.iter().map(ToString::to_string).collect::<Vec<_>>().join(" / ")) }
                            td.num.dlq-count {
                                a href=(format!("/dlq/{}/{}", s.adapter, s.stage)) class=(if s.dlq_pending > 0 { "bad" } else { "ok" }) { (s.dlq_pending) }
                            }
                            td { (reasons(&s.dlq_last_hour)) }
                            td.reasons { (reasons(&s.dlq_last_day)) }
                            td { @if let Some(b) = &s.breaker { span class=(format!("pill {b}")) { (b) } } @else { span.muted { "—" } } }
                            td.num { @if s.stage == "deliver" { (s.in_doubt_last_day) } @else { span.muted { "—" } } }
                        }
                    }
                }
            }
            p.muted { "Lag and retry depth count records the stage has yet to process; dead letters to replay are those beyond the replay group's offsets." }
        },
    ))
}

fn query(r: Result<Query<DlqQuery>, QueryRejection>) -> Result<DlqQuery, ConsoleError> {
    r.map(|Query(q)| q).map_err(|e| ConsoleError::BadRequest {
        api: false,
        detail: e.body_text(),
    })
}

fn hidden_filter(q: &DlqQuery) -> Markup {
    html! {
        @for (k, v) in [("class", &q.class), ("error", &q.error), ("key", &q.key), ("event_id", &q.event_id), ("since", &q.since), ("until", &q.until)] {
            @if let Some(v) = v { input type="hidden" name=(k) value=(v); }
        }
    }
}

/// `GET /dlq/{adapter}/{stage}`: dead letters with filters and masked previews.
pub async fn dlq_list(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Markup, ConsoleError> {
    let (adapter, stage) = super::segments(false, path)?;
    let q = query(q)?;
    let letters = api::letters(&app, false, &adapter, &stage, &q).await?;
    let stats = crate::ops::dlq::stats(letters.iter().map(|(d, _)| d));
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    Ok(layout(
        &app,
        "Dead letters",
        html! {
            h1 { "Dead letters of " (adapter) " · " (stage) }
            form.filters method="get" {
                select name="class" {
                    option value="" { "any class" }
                    @for c in crate::model::headers::ErrorClass::ALL {
                        option value=(c.as_str()) selected[q.class.as_deref() == Some(c.as_str())] { (c.as_str()) }
                    }
                }
                input name="error" placeholder="error text" value=(v(&q.error));
                input name="key" placeholder="record key" value=(v(&q.key));
                input name="event_id" placeholder="event id" value=(v(&q.event_id));
                input name="since" placeholder="since (PT1H, 2026-11-24T10:00Z)" value=(v(&q.since));
                button type="submit" { "Filter" }
            }
            div.card #reasons {
                b { (stats.total) " shown" } " · by reason: " (reasons(&stats.by_reason))
            }
            form method="post" action="/replays/preview" {
                input type="hidden" name="csrf" value=(app.csrf);
                input type="hidden" name="adapter" value=(adapter);
                input type="hidden" name="stage" value=(stage);
                (hidden_filter(&q))
                p {
                    button type="submit" name="scope" value="selected" { "Replay selected…" } " "
                    button.secondary type="submit" name="scope" value="filter" { "Replay everything matching the filter…" }
                    span.muted { " A dry run comes first." }
                }
                table #letters {
                    thead { tr { th {} th { "Place" } th { "Dead-lettered" } th { "Class" } th.num { "Attempt" } th { "Reason" } th { "Record (masked)" } } }
                    tbody {
                        @for (d, p) in &letters {
                            @let e = d.envelope.as_ref();
                            tr {
                                td { input type="checkbox" name="record" value=(format!("{}:{}", d.partition, d.offset)); }
                                td { a.record href=(format!("/dlq/{adapter}/{stage}/{}/{}", d.partition, d.offset)) { (d.partition) ":" (d.offset) } }
                                td.muted { (d.timestamp.map(time).unwrap_or_default()) }
                                td { span.pill { (e.map_or("?", |e| e.class.as_str())) } }
                                td.num { (e.map_or(0, |e| e.attempt)) }
                                td { (e.map_or("no envelope", |e| e.message.as_str())) }
                                td {
                                    b { (p.record.as_deref().unwrap_or("undecodable")) }
                                    @for f in &p.fields { div.muted { (f) } }
                                    @if let Some(h) = &p.hex { div.muted.hex { "bytes " (h) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// `GET /dlq/{adapter}/{stage}/{partition}/{offset}`: one dead letter in full, masked.
pub async fn record(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
) -> Result<Markup, ConsoleError> {
    let path = super::segments(false, path)?;
    let (d, p) = api::one(&app, false, &path).await?;
    let (adapter, stage, _, _) = &path;
    let j = api::letter_json(&d, &p);
    let value = match (&p.masked, &p.hex) {
        (Some(v), _) => serde_json::to_string_pretty(v).unwrap_or_default(),
        (None, Some(h)) => format!("undecodable; first bytes: {h}"),
        (None, None) => "no value".into(),
    };
    Ok(layout(
        &app,
        "Dead letter",
        html! {
            h1 { "Dead letter " (d.coordinates()) }
            table #envelope {
                @for k in ["class", "message", "attempt", "http_status", "correlation_id", "record", "event_id", "command_id"] {
                    @if !j[k].is_null() { tr { th { (k) } td { (j[k].as_str().map_or_else(|| j[k].to_string(), str::to_string)) } } }
                }
                @if let Some(e) = &d.envelope {
                    tr { th { "first failed" } td { (time(e.first_failed_at)) } }
                    tr { th { "origin" } td { (e.origin.topic) " partition " (e.origin.partition) " offset " (e.origin.offset) } }
                }
            }
            h2 { "Value (masked)" }
            pre #value { (value) }
            form method="post" action="/replays/preview" {
                input type="hidden" name="csrf" value=(app.csrf);
                input type="hidden" name="adapter" value=(adapter);
                input type="hidden" name="stage" value=(stage);
                input type="hidden" name="scope" value="selected";
                input type="hidden" name="record" value=(format!("{}:{}", d.partition, d.offset));
                button #replay-one type="submit" { "Replay this dead letter…" }
                span.muted { " A dry run comes first." }
            }
        },
    ))
}

/// The fields of the replay forms (`record` repeats).
fn replay_request(
    fields: &[(String, String)],
    execute: bool,
) -> Result<ReplayRequest, ConsoleError> {
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let adapter = get("adapter").unwrap_or_default();
    let stage = get("stage").unwrap_or_default();
    let scope = get("scope").unwrap_or_else(|| "selected".into());
    let mut records = Vec::new();
    if scope == "selected" {
        for (_, v) in fields.iter().filter(|(n, _)| n == "record") {
            let (p, o) = v.split_once(':').ok_or_else(|| ConsoleError::BadRequest {
                api: false,
                detail: format!("bad record `{v}`"),
            })?;
            records.push(RecordRef {
                partition: p.parse().map_err(|_| ConsoleError::BadRequest {
                    api: false,
                    detail: format!("bad record `{v}`"),
                })?,
                offset: o.parse().map_err(|_| ConsoleError::BadRequest {
                    api: false,
                    detail: format!("bad record `{v}`"),
                })?,
            });
        }
        if records.is_empty() {
            return Err(ConsoleError::BadRequest {
                api: false,
                detail: "select at least one dead letter".into(),
            });
        }
    }
    Ok(ReplayRequest {
        adapter,
        stage,
        records,
        filter: (scope == "filter").then(|| DlqQuery {
            class: get("class"),
            error: get("error"),
            key: get("key"),
            event_id: get("event_id"),
            since: get("since"),
            until: get("until"),
            limit: None,
        }),
        execute,
        reason: get("reason"),
        operator: get("operator"),
    })
}

fn form_fields(
    body: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Vec<(String, String)>, ConsoleError> {
    body.map(|Form(f)| f).map_err(|e| ConsoleError::BadRequest {
        api: false,
        detail: e.body_text(),
    })
}

/// `POST /replays/preview`: the dry run, then the reason prompt.
pub async fn replay_preview(
    State(app): State<Arc<App>>,
    body: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Markup, ConsoleError> {
    let fields = form_fields(body)?;
    let r = replay_request(&fields, false)?;
    let specs = api::specs(&app, false, &r)?;
    let counts = api::dry_run(&app, false, &specs).await?;
    let by_reason: BTreeMap<String, u64> =
        serde_json::from_value(counts["by_reason"].clone()).unwrap_or_default();
    let selected = counts["selected"].as_u64().unwrap_or(0);
    let carried: Vec<&(String, String)> = fields
        .iter()
        .filter(|(k, _)| k != "csrf" && k != "reason" && k != "operator")
        .collect();
    Ok(layout(
        &app,
        "Replay preview",
        html! {
            h1 { "Replay preview (dry run)" }
            div.card #preview {
                p { "Would copy " b #selected { (selected) } " dead letter(s) of " (r.adapter) " · " (r.stage) " back into that stage, exactly once." }
                table { thead { tr { th.num { "Count" } th { "Reason" } } }
                    tbody { @for (reason, n) in &by_reason { tr { td.num { (n) } td { (reason) } } } } }
            }
            @if selected > 0 {
                form #replay method="post" action="/replays" {
                    input type="hidden" name="csrf" value=(app.csrf);
                    @for (k, v) in &carried { input type="hidden" name=(k) value=(v); }
                    p { label { "Why (recorded on every copy and in the audit log) " br; input #reason name="reason" required size="70"; } }
                    p { label { "Who " br; input name="operator" placeholder="console"; } }
                    button #confirm type="submit" { "Replay " (selected) " dead letter(s)" }
                }
            } @else {
                p.muted { "Nothing to replay." }
            }
        },
    ))
}

/// `POST /replays`: starts the replay as a job and shows its progress.
pub async fn replay_start(
    State(app): State<Arc<App>>,
    body: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, ConsoleError> {
    let fields = form_fields(body)?;
    let r = replay_request(&fields, true)?;
    let specs = api::specs(&app, false, &r)?;
    let id = app.jobs.start(&app.settings, specs);
    Ok(Redirect::to(&format!("/replays/{id}")).into_response())
}

const PROGRESS_JS: &str = r#"
(function(){
  var el=document.getElementById('job');var id=el.dataset.id;
  function tick(){fetch('/api/replays/'+id,{credentials:'same-origin'}).then(function(r){return r.json()}).then(function(j){
    document.getElementById('status').textContent=j.status;
    document.getElementById('read').textContent=j.read;document.getElementById('total').textContent=j.total;
    document.getElementById('replayed').textContent=j.replayed;
    var bar=document.getElementById('bar');bar.max=Math.max(j.total,1);bar.value=j.read;
    if(j.error){document.getElementById('error').textContent=j.error;}
    if(j.status==='running'){setTimeout(tick,500);}
  }).catch(function(){setTimeout(tick,2000);});}
  tick();
})();
"#;

/// `GET /replays/{id}`: a replay's progress (polled; a reload finds it again).
pub async fn replay_progress(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Markup, ConsoleError> {
    let id = super::segments(false, id)?;
    let job = app.jobs.get(&id).ok_or_else(|| ConsoleError::NotFound {
        api: false,
        what: format!("no replay {id}"),
    })?;
    Ok(layout(
        &app,
        "Replay",
        html! {
            h1 { "Replay of " (job.adapter) " · " (job.stage) }
            div.card #job data-id=(job.id) {
                p { "Status: " b #status { (job.status) } }
                p { progress #bar max=(job.total.max(1)) value=(job.read) {} " read " span #read { (job.read) } " of " span #total { (job.total) } }
                p { "Copied back: " b #replayed { (job.replayed) } }
                p.bad #error { (job.error.clone().unwrap_or_default()) }
                p.muted { "Reason: " (job.reason) " · by " (job.operator) " · started " (time(job.started_at)) }
            }
            p { a href=(format!("/dlq/{}/{}", job.adapter, job.stage)) { "Back to the dead letters" } " · " a href="/audit" { "Audit log" } }
            script { (PreEscaped(PROGRESS_JS)) }
        },
    ))
}

/// `GET /audit`.
pub async fn audit(State(app): State<Arc<App>>) -> Result<Markup, ConsoleError> {
    let (k, t) = (
        app.settings.kafka.clone(),
        Names::new(&app.settings).audit(),
    );
    let mut records = tokio::task::spawn_blocking(move || audit::list(&k, &t))
        .await
        .map_err(|e| ConsoleError::unavailable(false, e))?
        .map_err(|e| ConsoleError::unavailable(false, e))?;
    records.reverse();
    Ok(layout(
        &app,
        "Audit log",
        html! {
            h1 { "Audit log" }
            table #audit {
                thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Target" } th.num { "Count" } th { "Why" } } }
                tbody {
                    @for r in &records {
                        tr {
                            td.muted { (time(r.at)) }
                            td { (r.operator) }
                            td { (r.action) }
                            td { (r.target) }
                            td.num { (r.detail["count"].as_u64().or_else(|| r.detail["plan"].as_array().map(|p| p.len() as u64)).unwrap_or(0)) }
                            td { (r.reason.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        },
    ))
}
