//! The console's JSON API under `/api/` (documented in `/openapi.json`): what the pages show, for
//! scripts. The pages call the same helpers.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{App, ConsoleError};
use crate::kafka::names::{Names, Stage};
use crate::model::headers::ErrorClass;
use crate::ops::dlq::{self, DeadLetter, Filter, Preview};
use crate::ops::replay::{self, Bound, ReplaySpec};
use crate::ops::{audit, health};

/// Filters of a DLQ listing or a replay (query string or JSON).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    /// Error class.
    pub class: Option<String>,
    /// Text in the error message.
    pub error: Option<String>,
    /// Record key.
    pub key: Option<String>,
    /// Event id.
    pub event_id: Option<String>,
    /// Dead-lettered at or after (RFC 3339, or `PT1H` back from now).
    pub since: Option<String>,
    /// Dead-lettered before.
    pub until: Option<String>,
    /// Most records listed.
    pub limit: Option<usize>,
}

/// One dead letter, by its place.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRef {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A replay request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The adapter.
    pub adapter: String,
    /// `process` or `deliver`.
    pub stage: String,
    /// These records (else the filter).
    #[serde(default)]
    pub records: Vec<RecordRef>,
    /// The filter, from the replay group's offsets.
    #[serde(default)]
    pub filter: Option<DlqQuery>,
    /// Copy (else a dry run).
    #[serde(default)]
    pub execute: bool,
    /// Why (required to execute).
    pub reason: Option<String>,
    /// Who.
    pub operator: Option<String>,
}

fn bad(api: bool, detail: impl Into<String>) -> ConsoleError {
    ConsoleError::BadRequest {
        api,
        detail: detail.into(),
    }
}

/// The stage named `s`.
pub(super) fn stage(api: bool, s: &str) -> Result<Stage, ConsoleError> {
    match s {
        "process" => Ok(Stage::Process),
        "deliver" => Ok(Stage::Deliver),
        other => Err(bad(api, format!("no stage `{other}`: process or deliver"))),
    }
}

/// `adapter`, if it is configured.
pub(super) fn adapter(app: &App, api: bool, adapter: &str) -> Result<String, ConsoleError> {
    if app.settings.adapters.contains_key(adapter) {
        Ok(adapter.to_string())
    } else {
        Err(ConsoleError::NotFound {
            api,
            what: format!("no adapter `{adapter}` is configured"),
        })
    }
}

fn time(api: bool, field: &str, s: &Option<String>) -> Result<Option<i64>, ConsoleError> {
    let Some(s) = s.as_deref().filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let parsed = if s.starts_with('P') {
        crate::ops::offsets::parse_duration(s).map(|d| {
            crate::model::event::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
    } else {
        crate::ops::offsets::parse_datetime(s)
    };
    parsed
        .map(Some)
        .map_err(|e| bad(api, format!("{field}: {e}")))
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The library filter of `q`.
pub(super) fn filter(api: bool, q: &DlqQuery) -> Result<Filter, ConsoleError> {
    let class = match nonempty(&q.class) {
        None => None,
        Some(c) => {
            Some(ErrorClass::parse(&c).ok_or_else(|| bad(api, format!("no error class `{c}`")))?)
        }
    };
    Ok(Filter {
        since: time(api, "since", &q.since)?,
        until: time(api, "until", &q.until)?,
        class,
        reason: nonempty(&q.error),
        key: nonempty(&q.key),
        event_id: nonempty(&q.event_id),
        ..Filter::default()
    })
}

/// The replay specs of a request: one per named record, or one for the filter.
pub(super) fn specs(
    app: &App,
    api: bool,
    r: &ReplayRequest,
) -> Result<Vec<ReplaySpec>, ConsoleError> {
    let adapter = adapter(app, api, &r.adapter)?;
    let stage = stage(api, &r.stage)?;
    let reason = nonempty(&r.reason);
    if r.execute && reason.is_none() {
        return Err(bad(api, "a replay needs a reason"));
    }
    let operator = nonempty(&r.operator).unwrap_or_else(|| "console".into());
    let base = ReplaySpec {
        adapter,
        stage,
        filter: Filter::default(),
        from: None,
        to: None,
        execute: r.execute,
        reason,
        operator,
        batch: 200,
    };
    if r.records.is_empty() {
        let f = filter(api, r.filter.as_ref().unwrap_or(&DlqQuery::default()))?;
        return Ok(vec![ReplaySpec { filter: f, ..base }]);
    }
    Ok(r.records
        .iter()
        .map(|rec| ReplaySpec {
            filter: Filter {
                partitions: Some(vec![rec.partition]),
                ..Filter::default()
            },
            from: Some(Bound::Offset(rec.offset)),
            to: Some(Bound::Offset(rec.offset + 1)),
            ..base.clone()
        })
        .collect())
}

/// The dead letters of `adapter`'s `stage` matching `q`, with previews.
pub(super) async fn letters(
    app: &App,
    api: bool,
    adapter: &str,
    stage_name: &str,
    q: &DlqQuery,
) -> Result<Vec<(DeadLetter, Preview)>, ConsoleError> {
    let adapter = self::adapter(app, api, adapter)?;
    let stage = stage(api, stage_name)?;
    let f = filter(api, q)?;
    let topic = Names::new(&app.settings).dlq(&adapter, stage);
    dlq::select(
        &app.settings.kafka,
        &app.codec,
        &topic,
        &f,
        q.limit.unwrap_or(100).min(1_000),
    )
    .await
    .map_err(|e| ConsoleError::unavailable(api, e))
}

/// One dead letter and its preview.
pub(super) async fn one(
    app: &App,
    api: bool,
    path: &(String, String, String, String),
) -> Result<(DeadLetter, Preview), ConsoleError> {
    let (adapter, stage_name, partition, offset) = path;
    let adapter = self::adapter(app, api, adapter)?;
    let stage = stage(api, stage_name)?;
    let partition: i32 = partition
        .parse()
        .map_err(|_| bad(api, "partition is not a number"))?;
    let offset: i64 = offset
        .parse()
        .map_err(|_| bad(api, "offset is not a number"))?;
    let topic = Names::new(&app.settings).dlq(&adapter, stage);
    let f = Filter {
        partitions: Some(vec![partition]),
        from_offset: Some(offset),
        to_offset: Some(offset + 1),
        ..Filter::default()
    };
    let found = dlq::select(&app.settings.kafka, &app.codec, &topic, &f, 1)
        .await
        .map_err(|e| ConsoleError::unavailable(api, e))?;
    found
        .into_iter()
        .next()
        .ok_or_else(|| ConsoleError::NotFound {
            api,
            what: format!("no dead letter at {topic} partition {partition} offset {offset}"),
        })
}

/// A dead letter as the API shows it.
pub(super) fn letter_json(d: &DeadLetter, p: &Preview) -> Value {
    let e = d.envelope.as_ref();
    json!({
        "partition": d.partition, "offset": d.offset, "dead_lettered_at": d.timestamp,
        "class": e.map(|e| e.class.as_str()), "message": e.map(|e| &e.message),
        "attempt": e.map(|e| e.attempt), "first_failed_at": e.map(|e| e.first_failed_at),
        "http_status": e.and_then(|e| e.http_status),
        "origin": e.map(|e| json!({"topic": e.origin.topic, "partition": e.origin.partition, "offset": e.origin.offset})),
        "correlation_id": e.and_then(|e| e.correlation_id.clone()),
        "record": p.record, "event_id": p.event_id, "command_id": p.command_id,
        "preview": p.fields, "value": p.masked, "hex": p.hex,
    })
}

fn query(r: Result<Query<DlqQuery>, QueryRejection>) -> Result<DlqQuery, ConsoleError> {
    r.map(|Query(q)| q).map_err(|e| bad(true, e.body_text()))
}

/// `GET /api/overview`.
pub async fn overview(State(app): State<Arc<App>>) -> Result<Response, ConsoleError> {
    let h = health::overview(&app.settings)
        .await
        .map_err(|e| ConsoleError::unavailable(true, e))?;
    Ok(Json(json!({"stages": h})).into_response())
}

/// `GET /api/dlq/{adapter}/{stage}`.
pub async fn dlq_list(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Response, ConsoleError> {
    let (adapter, stage) = super::segments(true, path)?;
    let q = query(q)?;
    let rows: Vec<Value> = letters(&app, true, &adapter, &stage, &q)
        .await?
        .iter()
        .map(|(d, p)| letter_json(d, p))
        .collect();
    Ok(Json(json!({"dead_letters": rows})).into_response())
}

/// `GET /api/dlq/{adapter}/{stage}/{partition}/{offset}`.
pub async fn record(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
) -> Result<Response, ConsoleError> {
    let path = super::segments(true, path)?;
    let (d, p) = one(&app, true, &path).await?;
    Ok(Json(letter_json(&d, &p)).into_response())
}

/// `POST /api/replays`: a dry run answers its counts; an executed replay starts a job (202).
pub async fn replay(
    State(app): State<Arc<App>>,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Result<Response, ConsoleError> {
    let Json(r) = body.map_err(|e| bad(true, e.body_text()))?;
    let specs = specs(&app, true, &r)?;
    if r.execute {
        let id = app.jobs.start(&app.settings, specs);
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "status": format!("/api/replays/{id}")})),
        )
            .into_response());
    }
    Ok(Json(dry_run(&app, true, &specs).await?).into_response())
}

/// The counts a dry run of `specs` gives.
pub(super) async fn dry_run(
    app: &App,
    api: bool,
    specs: &[ReplaySpec],
) -> Result<Value, ConsoleError> {
    let mut selected = 0;
    let mut by_reason = std::collections::BTreeMap::<String, u64>::new();
    for spec in specs {
        let mut ignore = |_: u64, _: u64| {};
        let s = replay::run(&app.settings, spec, &mut ignore)
            .await
            .map_err(|e| ConsoleError::unavailable(api, e))?;
        selected += s.selected;
        for (r, n) in s.by_reason {
            *by_reason.entry(r).or_insert(0) += n;
        }
    }
    Ok(json!({"dry_run": true, "selected": selected, "by_reason": by_reason}))
}

/// `GET /api/replays/{id}`.
pub async fn replay_status(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ConsoleError> {
    let id = super::segments(true, id)?;
    let job = app.jobs.get(&id).ok_or_else(|| ConsoleError::NotFound {
        api: true,
        what: format!("no replay {id}"),
    })?;
    Ok(Json(job).into_response())
}

/// `GET /api/audit`.
pub async fn audit(State(app): State<Arc<App>>) -> Result<Response, ConsoleError> {
    let (k, t) = (
        app.settings.kafka.clone(),
        Names::new(&app.settings).audit(),
    );
    let records = tokio::task::spawn_blocking(move || audit::list(&k, &t))
        .await
        .map_err(|e| ConsoleError::unavailable(true, e))?
        .map_err(|e| ConsoleError::unavailable(true, e))?;
    Ok(Json(json!({"audit": records})).into_response())
}
