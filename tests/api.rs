//! Router tests, in-process through `tower::ServiceExt::oneshot`.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use iris_serve::model::Model;
use iris_serve::{AppState, MAX_BATCH_ROWS, MAX_BODY_BYTES, app};
use serde_json::{Value, json};
use tower::ServiceExt;

fn router() -> axum::Router {
    app(AppState::new(
        Model::embedded().expect("embedded model"),
        "test-pod-0",
    ))
}

async fn call(
    router: axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = router.oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, value)
}

fn post_json(body: impl Into<Body>) -> Request<Body> {
    Request::post("/predict")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("request")
}

async fn predict(body: Value) -> (StatusCode, Value) {
    let (s, _, v) = call(router(), post_json(body.to_string())).await;
    (s, v)
}

#[tokio::test]
async fn single_row_predicts_setosa() {
    let (status, headers, body) =
        call(router(), post_json(r#"{"features": [5.1, 3.5, 1.4, 0.2]}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-served-by"], "test-pod-0");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        body,
        json!({"prediction": 0, "class": "setosa",
               "probabilities": {"setosa": 1.0, "versicolor": 0.0, "virginica": 0.0},
               "confidence": 1.0})
    );
}

#[tokio::test]
async fn batch_and_named_rows() {
    let (status, body) = predict(
        json!({"features": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 4.2, 1.5]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let classes: Vec<&str> = body["predictions"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["class"].as_str().expect("class"))
        .collect();
    assert_eq!(classes, ["setosa", "virginica", "versicolor"]);

    let named =
        json!({"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5});
    let (status, body) = predict(named.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["class"], "virginica");
    let (status, body) = predict(json!({"features": [named]})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["predictions"][0]["class"], "virginica");
}

#[tokio::test]
async fn probabilities_sum_to_one_and_match_confidence() {
    let (_, body) =
        predict(json!({"features": [[6.0, 2.7, 5.1, 1.6], [4.9, 2.5, 4.5, 1.7]]})).await;
    for p in body["predictions"].as_array().expect("list") {
        let probs = p["probabilities"].as_object().expect("map");
        let sum: f64 = probs.values().map(|v| v.as_f64().expect("num")).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{p}");
        let class = p["class"].as_str().expect("class");
        assert_eq!(probs[class], p["confidence"]);
    }
}

async fn expect_error(req: Request<Body>, status: StatusCode, code: &str) -> Value {
    let (s, headers, body) = call(router(), req).await;
    assert_eq!(s, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(headers["x-served-by"], "test-pod-0");
    body
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_json_body() {
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    expect_error(
        post_json("{not json"),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    expect_error(post_json(""), StatusCode::BAD_REQUEST, "invalid_json").await;
    expect_error(
        post_json(r#"{"features": [1e999, 1, 1, 1]}"#),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    expect_error(
        post_json(r#"{"features": [NaN, 1, 1, 1]}"#),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    let body = expect_error(
        post_json(r#"{"features": [1, 2, 3]}"#),
        unprocessable,
        "wrong_feature_count",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .expect("msg")
            .contains("expected 4"),
        "{body}"
    );
    expect_error(
        post_json(r#"{"features": [[1, 2, 3, 4], [1, 2]]}"#),
        unprocessable,
        "wrong_feature_count",
    )
    .await;
    let body = expect_error(
        post_json(r#"{"features": [1, "2", 3, 4]}"#),
        unprocessable,
        "invalid_feature_value",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .expect("msg")
            .contains("features[1]"),
        "{body}"
    );
    expect_error(
        post_json(r#"{"features": [1, null, 3, 4]}"#),
        unprocessable,
        "invalid_feature_value",
    )
    .await;
    expect_error(
        post_json(r#"{"features": []}"#),
        unprocessable,
        "empty_batch",
    )
    .await;
    expect_error(
        post_json(r#"{"rows": [1, 2, 3, 4]}"#),
        unprocessable,
        "invalid_request",
    )
    .await;
    expect_error(
        post_json(r#"[1, 2, 3, 4]"#),
        unprocessable,
        "invalid_request",
    )
    .await;
    expect_error(
        post_json(r#"{"features": "1,2,3,4"}"#),
        unprocessable,
        "invalid_request",
    )
    .await;
    expect_error(
        post_json(r#"{"sepal_length": 1, "sepal_width": 2, "petal_length": 3, "petal_widht": 4}"#),
        unprocessable,
        "unknown_feature",
    )
    .await;
    let batch = json!({"features": vec![[5.1, 3.5, 1.4, 0.2]; MAX_BATCH_ROWS + 1]});
    expect_error(
        post_json(batch.to_string()),
        unprocessable,
        "batch_too_large",
    )
    .await;
    let ok = json!({"features": vec![[5.1, 3.5, 1.4, 0.2]; MAX_BATCH_ROWS]});
    assert_eq!(
        call(router(), post_json(ok.to_string())).await.0,
        StatusCode::OK
    );
    let huge = format!(
        r#"{{"features": [1, 2, 3, 4], "pad": "{}"}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    expect_error(
        post_json(huge),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    let no_type = Request::post("/predict")
        .body(Body::from(r#"{"features": [1, 2, 3, 4]}"#))
        .expect("req");
    expect_error(
        no_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let text = Request::post("/predict")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .expect("req");
    expect_error(
        text,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let charset = Request::post("/predict")
        .header(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")
        .body(Body::from(r#"{"features": [1, 2, 3, 4]}"#))
        .expect("req");
    assert_eq!(call(router(), charset).await.0, StatusCode::OK);

    let get = Request::get("/predict").body(Body::empty()).expect("req");
    expect_error(get, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let post_health = Request::post("/health").body(Body::empty()).expect("req");
    expect_error(
        post_health,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    let nowhere = Request::get("/nope").body(Body::empty()).expect("req");
    expect_error(nowhere, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn health_ready_and_draining() {
    let state = AppState::new(Model::embedded().expect("model"), "p");
    let get = |path: &str| Request::get(path).body(Body::empty()).expect("req");
    let (s, _, b) = call(app(state.clone()), get("/health")).await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, _, _) = call(app(state.clone()), get("/ready")).await;
    assert_eq!(s, StatusCode::OK);
    state.start_draining();
    let (s, _, b) = call(app(state.clone()), get("/ready")).await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("draining"))
    );
    // Still serving while draining.
    let (s, _, _) = call(app(state.clone()), get("/health")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(app(state), post_json(r#"{"features": [1, 2, 3, 4]}"#)).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn info_describes_the_model() {
    let (s, _, b) = call(
        router(),
        Request::get("/info").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let model = Model::embedded().expect("model");
    assert_eq!(b["model"]["sha256"], model.sha256.as_str());
    assert_eq!(b["model"]["format"], "iris-tree/v1");
    assert_eq!(
        b["model"]["classes"],
        json!(["setosa", "versicolor", "virginica"])
    );
    assert_eq!(b["model"]["feature_names"][0], "sepal_length");
    assert!(b["model"]["test_accuracy"].as_f64().expect("acc") > 0.9);
    assert_eq!(b["server"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(b["server"]["served_by"], "test-pod-0");
    assert_eq!(
        b["server"]["max_connections"],
        iris_serve::DEFAULT_MAX_CONNECTIONS
    );
    assert_eq!(b["server"]["header_read_timeout_seconds"], 10.0);
    assert_eq!(b["server"]["idle_timeout_seconds"], 60.0);
}

#[tokio::test]
async fn metrics_count_requests_predictions_and_build() {
    let state = AppState::new(Model::embedded().expect("model"), "p");
    for _ in 0..3 {
        call(
            app(state.clone()),
            post_json(r#"{"features": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}"#),
        )
        .await;
    }
    call(app(state.clone()), post_json("nope")).await;
    let (s, headers, body) = call(
        app(state),
        Request::get("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("application/openmetrics-text")
    );
    let text = body.as_str().expect("text");
    for needle in [
        r#"iris_serve_http_requests_total{route="/predict",method="POST",status="200"} 3"#,
        r#"iris_serve_http_requests_total{route="/predict",method="POST",status="400"} 1"#,
        r#"iris_serve_predictions_total{class="setosa"} 3"#,
        r#"iris_serve_predictions_total{class="virginica"} 3"#,
        r#"iris_serve_predictions_total{class="versicolor"} 0"#,
        r#"iris_serve_http_request_duration_seconds_count{route="/predict"} 4"#,
        "iris_serve_http_requests_in_flight 1",
        "iris_serve_build_info{version=",
        // Connection series exist from the start (at 0 here: `oneshot` opens no connection).
        "# TYPE iris_serve_connections_open gauge",
        "iris_serve_connections_open 0",
        "# TYPE iris_serve_connections_refused counter",
        "iris_serve_connections_refused_total 0",
        "iris_serve_connections_accepted_total 0",
        r#"iris_serve_connections_timed_out_total{timeout="header_read"} 0"#,
        r#"iris_serve_connections_timed_out_total{timeout="idle"} 0"#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn every_dataset_row_classifies_like_the_model_card_says() {
    // The embedded model's accuracy over all 150 rows is between its CV and training accuracy.
    let model = Model::embedded().expect("model");
    let csv = include_str!("../model/iris.csv");
    let mut correct = 0;
    let mut total = 0;
    for line in csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let row: Vec<f64> = cells[..4].iter().map(|c| c.parse().expect("num")).collect();
        let class = model
            .class_names()
            .iter()
            .position(|c| c == cells[4])
            .expect("class");
        correct += usize::from(model.predict(&row).class == class);
        total += 1;
    }
    assert_eq!(total, 150);
    assert!(correct >= 140, "{correct}/150");
}
