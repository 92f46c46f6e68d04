//! HTTP routes, request parsing and the error type every route answers with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::model::Model;
use crate::server::ConnectionLimits;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest number of rows in one batch.
pub const MAX_BATCH_ROWS: usize = 1024;

pub static SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// Everything a request handler needs; shared by all connections.
pub struct AppState {
    model: Model,
    metrics: Metrics,
    served_by: HeaderValue,
    draining: AtomicBool,
    /// The JSON object each leaf answers with, rendered once at start.
    leaf_json: Vec<Bytes>,
    limits: ConnectionLimits,
}

impl AppState {
    /// With the default [`ConnectionLimits`].
    pub fn new(model: Model, served_by: &str) -> Arc<Self> {
        Self::with_limits(model, served_by, ConnectionLimits::default())
    }

    pub fn with_limits(model: Model, served_by: &str, limits: ConnectionLimits) -> Arc<Self> {
        let metrics = Metrics::new(model.class_names(), &model.sha256);
        let served_by = HeaderValue::from_str(served_by)
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let leaf_json = model
            .leaves()
            .iter()
            .map(|leaf| Bytes::from(render_leaf(model.class_names(), leaf)))
            .collect();
        Arc::new(AppState {
            model,
            metrics,
            served_by,
            draining: AtomicBool::new(false),
            leaf_json,
            limits,
        })
    }

    /// From now on `/ready` answers 503 so load balancers stop sending new traffic.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What [`crate::serve`] enforces, and `/info` shows.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }
}

/// The whole HTTP API.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/predict", post(predict))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A client error: a stable machine-readable code, a message that says what to fix, and a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    // Runs also when the client goes away and the handler future is dropped.
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = route_label(request.uri().path());
    let method = method_label(request.method());
    state.metrics.in_flight.inc();
    let guard = InFlight(&state.metrics);
    let mut response = next.run(request).await;
    drop(guard);
    response
        .headers_mut()
        .insert(SERVED_BY.clone(), state.served_by.clone());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    state
        .metrics
        .duration
        .get_or_create(&RouteLabels { route })
        .observe(start.elapsed().as_secs_f64());
    response
}

/// A fixed label per route, so a scan of random paths can't grow the metrics without bound.
fn route_label(path: &str) -> &'static str {
    match path {
        "/predict" => "/predict",
        "/health" => "/health",
        "/ready" => "/ready",
        "/info" => "/info",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "draining" })),
        )
    } else {
        (StatusCode::OK, axum::Json(json!({ "status": "ready" })))
    }
}

async fn info(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let file = &state.model.file;
    axum::Json(json!({
        "model": {
            "name": file.name,
            "format": file.format,
            "sha256": state.model.sha256,
            "classes": file.class_names,
            "feature_names": file.feature_names,
            "test_accuracy": file.metrics.test_accuracy,
            "cv_accuracy": file.metrics.cv_accuracy,
            "nodes": file.nodes.len(),
        },
        "server": {
            "version": env!("CARGO_PKG_VERSION"),
            "served_by": state.served_by.to_str().unwrap_or("unknown"),
            "max_body_bytes": MAX_BODY_BYTES,
            "max_batch_rows": MAX_BATCH_ROWS,
            "max_connections": state.limits.max_connections,
            "header_read_timeout_seconds": state.limits.header_read_timeout.as_secs_f64(),
            "idle_timeout_seconds": state.limits.idle_timeout.as_secs_f64(),
        },
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route for {method} {}; routes: POST /predict, GET /health, /ready, /info, /metrics",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    let allowed = if uri.path() == "/predict" {
        "POST"
    } else {
        "GET"
    };
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}; use {allowed}", uri.path()),
    )
}

async fn predict(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_json_content_type(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is over {MAX_BODY_BYTES} bytes; send smaller batches"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("could not read the request body: {rejection}"),
            )
        }
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let model = &state.model;
    let request = parse_predict_request(&value, &model.file.feature_names)?;
    let mut leaves = Vec::with_capacity(request.rows.len());
    for row in &request.rows {
        let leaf = model.leaf_index(row);
        state.metrics.predictions[model.leaves()[leaf].class].inc();
        leaves.push(leaf);
    }
    let body = if request.batch {
        let mut out = Vec::with_capacity(16 + leaves.len() * state.leaf_json[0].len());
        out.extend_from_slice(b"{\"predictions\":[");
        for (i, &leaf) in leaves.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&state.leaf_json[leaf]);
        }
        out.extend_from_slice(b"]}");
        Bytes::from(out)
    } else {
        state.leaf_json[leaves[0]].clone()
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let wrong = |found: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the body as JSON with `Content-Type: application/json` (got {found})"),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(wrong("no Content-Type"));
    };
    let text = value
        .to_str()
        .map_err(|_| wrong("an unreadable Content-Type"))?;
    let essence = text.split(';').next().unwrap_or("").trim();
    let is_json = essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence.is_char_boundary(essence.len() - 5)
            && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"));
    if is_json {
        Ok(())
    } else {
        Err(wrong(&format!("{text:?}")))
    }
}

/// A parsed `/predict` body: the rows, and whether the client asked in batch form.
#[derive(Debug, PartialEq)]
pub struct PredictRequest {
    pub rows: Vec<Vec<f64>>,
    pub batch: bool,
}

/// Accepted forms:
/// - `{"features": [5.1, 3.5, 1.4, 0.2]}`: one row, answered with one prediction object;
/// - `{"features": [[...], [...]]}`: a batch, answered with `{"predictions": [...]}`;
/// - named fields, `{"sepal_length": 5.1, ...}` as one row, or as the items of a `features` batch.
pub fn parse_predict_request(
    value: &Value,
    feature_names: &[String],
) -> Result<PredictRequest, ApiError> {
    let Value::Object(object) = value else {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!(
                "the body must be a JSON object such as {{\"features\": [{}]}}",
                example_row(feature_names.len())
            ),
        ));
    };
    match object.get("features") {
        Some(Value::Array(items))
            if items.first().is_some_and(|v| v.is_array() || v.is_object()) =>
        {
            if items.len() > MAX_BATCH_ROWS {
                return Err(ApiError::unprocessable(
                    "batch_too_large",
                    format!(
                        "the batch has {} rows; at most {MAX_BATCH_ROWS} are accepted per request",
                        items.len()
                    ),
                ));
            }
            let rows = items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_row(item, feature_names, &format!("features[{i}]")))
                .collect::<Result<_, _>>()?;
            Ok(PredictRequest { rows, batch: true })
        }
        Some(Value::Array(items)) if items.is_empty() => Err(ApiError::unprocessable(
            "empty_batch",
            "`features` is empty; send one row of numbers or a list of rows",
        )),
        Some(row) => Ok(PredictRequest {
            rows: vec![parse_row(row, feature_names, "features")?],
            batch: false,
        }),
        None if feature_names.iter().any(|n| object.contains_key(n)) => Ok(PredictRequest {
            rows: vec![parse_row(value, feature_names, "body")?],
            batch: false,
        }),
        None => Err(ApiError::unprocessable(
            "invalid_request",
            format!(
                "the body has no `features` field; send {{\"features\": [{}]}}",
                example_row(feature_names.len())
            ),
        )),
    }
}

fn parse_row(value: &Value, feature_names: &[String], at: &str) -> Result<Vec<f64>, ApiError> {
    match value {
        Value::Array(items) => {
            if items.len() != feature_names.len() {
                return Err(ApiError::unprocessable(
                    "wrong_feature_count",
                    format!(
                        "{at} has {} values; expected {} ({})",
                        items.len(),
                        feature_names.len(),
                        feature_names.join(", ")
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| number(v, &format!("{at}[{i}]")))
                .collect()
        }
        Value::Object(fields) => {
            if let Some(unknown) = fields.keys().find(|k| !feature_names.contains(k)) {
                return Err(ApiError::unprocessable(
                    "unknown_feature",
                    format!(
                        "{at} has an unknown field {unknown:?}; expected {}",
                        feature_names.join(", ")
                    ),
                ));
            }
            feature_names
                .iter()
                .map(|name| match fields.get(name) {
                    Some(v) => number(v, &format!("{at}.{name}")),
                    None => Err(ApiError::unprocessable(
                        "wrong_feature_count",
                        format!("{at} is missing {name:?}"),
                    )),
                })
                .collect()
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            Err(ApiError::unprocessable(
                "invalid_request",
                format!(
                    "{at} must be a list of {} numbers or an object with fields {}",
                    feature_names.len(),
                    feature_names.join(", ")
                ),
            ))
        }
    }
}

fn number(value: &Value, at: &str) -> Result<f64, ApiError> {
    match value.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(ApiError::unprocessable(
            "invalid_feature_value",
            format!("{at} must be a finite number, got {value}"),
        )),
    }
}

fn example_row(n: usize) -> String {
    ["5.1", "3.5", "1.4", "0.2"]
        .iter()
        .cycle()
        .take(n)
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_leaf(class_names: &[String], leaf: &crate::model::LeafOutput) -> String {
    let mut out = format!(
        "{{\"prediction\":{},\"class\":{},\"probabilities\":{{",
        leaf.class,
        Value::from(class_names[leaf.class].as_str())
    );
    for (i, (name, p)) in class_names.iter().zip(&leaf.probabilities).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{}:{}",
            Value::from(name.as_str()),
            Value::from(*p)
        ));
    }
    out.push_str(&format!(
        "}},\"confidence\":{}}}",
        Value::from(leaf.confidence)
    ));
    out
}
