//! A Kubernetes API stand-in for unit tests: a kube `Client` over a tower-test mock service,
//! answering the requests the code under test makes, in order, and checking each one.

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use tower_test::mock::{self, Handle};

pub struct MockApi {
    handle: Handle<Request<Body>, Response<Body>>,
    /// Requests left unanswered on purpose (a call that hangs).
    held: Vec<tower_test::mock::SendResponse<Response<Body>>>,
}

impl MockApi {
    pub fn new() -> (Client, MockApi) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (
            Client::new(service, "default"),
            MockApi {
                handle,
                held: Vec::new(),
            },
        )
    }

    /// The next request, which must have this method, and the handle to answer it.
    async fn next(
        &mut self,
        method: &str,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (request, send) = self
            .handle
            .next_request()
            .await
            .expect("the code made no further request");
        assert_eq!(request.method().as_str(), method, "{}", request.uri());
        (request, send)
    }

    /// Answers the next request, which must have this method and path; returns its URI query and body.
    pub async fn expect(
        &mut self,
        method: &str,
        path: &str,
        response: Response<Body>,
    ) -> (String, serde_json::Value) {
        let (request, send) = self.next(method).await;
        assert_eq!(request.uri().path(), path);
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request
            .into_body()
            .collect()
            .await
            .expect("request body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        send.send_response(response);
        (query, body)
    }

    /// Answers the next request, whatever it is, with `answer(method, path, query)`; `None`
    /// leaves it unanswered for good. Returns the request's method, path and query, or None once
    /// the client is gone.
    pub async fn next_request(
        &mut self,
        answer: impl FnOnce(&str, &str, &str) -> Option<Response<Body>>,
    ) -> Option<(String, String, String)> {
        let (request, send) = self.handle.next_request().await?;
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        match answer(&method, &path, &query) {
            Some(response) => send.send_response(response),
            None => self.held.push(send),
        }
        Some((method, path, query))
    }

    /// Answers the next request, whatever its path, with what `respond` gives for that path: for
    /// requests the code sends at once, in no promised order. Returns the path.
    pub async fn answer(
        &mut self,
        method: &str,
        respond: impl FnOnce(&str) -> Response<Body>,
    ) -> String {
        let (seen, path, _) = self
            .next_request(|_, path, _| Some(respond(path)))
            .await
            .expect("the code made no further request");
        assert_eq!(seen, method, "{path}");
        path
    }

    /// Like `expect`, but returns false once the client is gone.
    pub async fn try_expect(&mut self, method: &str, path: &str, response: Response<Body>) -> bool {
        let Some((request, send)) = self.handle.next_request().await else {
            return false;
        };
        assert_eq!(request.method().as_str(), method);
        assert_eq!(request.uri().path(), path);
        send.send_response(response);
        true
    }
}

pub fn json_response(value: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&value).expect("json")))
        .expect("response")
}

/// A body passed through from a pod, as the API server's pod proxy returns it.
pub fn text_response(content_type: &str, text: &str) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(Body::from(text.as_bytes().to_vec()))
        .expect("response")
}

/// An API error as the API server sends it: a `Status` object with the HTTP code.
pub fn status_response(code: u16, reason: &str) -> Response<Body> {
    status_with_message(code, reason, &format!("{reason} (test)"))
}

/// A `Status` with the API server's own message.
pub fn status_with_message(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&status).expect("json")))
        .expect("response")
}
