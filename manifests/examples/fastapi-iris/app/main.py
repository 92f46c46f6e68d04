"""An Iris classifier as the seed projects write one: FastAPI, uvicorn, scikit-learn.

It is the harness's second app under test, one that is not ours: `cargo xtask e2e --app
manifests/examples/fastapi-iris` deploys it in place of iris-serve. It answers the request bodies
iris-serve answers (the harness's load and scenarios send those):

    POST /predict {"features": [5.1, 3.5, 1.4, 0.2]}          -> one prediction object
    POST /predict {"features": [[5.1, 3.5, 1.4, 0.2], ...]}   -> {"predictions": [...]}

A prediction object is iris-serve's: {"prediction": 0, "class": "setosa", "probabilities":
{"setosa": 1.0, ...}, "confidence": 1.0}. A body of another shape is answered 422 with FastAPI's
own JSON error. iris-serve's named-field forms ({"sepal_length": 5.1, ...}) are not mirrored.
"""

import time
from typing import Annotated, Union

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

# iris-serve refuses larger batches too.
MAX_BATCH_ROWS = 1024

# Trained at startup from the copy of the Iris data that scikit-learn ships (no download, no model
# file): a depth-4 tree like iris-serve's, so that both answer with leaf frequencies. It takes well
# under a second, before uvicorn accepts the first connection.
_iris = load_iris()
FEATURE_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASS_NAMES = [str(name) for name in _iris.target_names]
MODEL = DecisionTreeClassifier(max_depth=4, random_state=42).fit(_iris.data, _iris.target)

Row = Annotated[list[float], Field(min_length=len(FEATURE_NAMES), max_length=len(FEATURE_NAMES))]
Batch = Annotated[list[Row], Field(min_length=1, max_length=MAX_BATCH_ROWS)]


class PredictRequest(BaseModel):
    # One row of numbers, or a list of rows (a batch).
    features: Union[Row, Batch]


REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered, by route and status.", ["handler", "status"]
)
LATENCY = Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request, by route.", ["handler"]
)

app = FastAPI(title="fastapi-iris")


@app.middleware("http")
async def observe(request: Request, call_next):
    start = time.perf_counter()
    response = await call_next(request)
    # The route's path template, not the URL: a path nobody routes is one label, not one per URL.
    route = request.scope.get("route")
    handler = getattr(route, "path", "other")
    LATENCY.labels(handler).observe(time.perf_counter() - start)
    REQUESTS.labels(handler, str(response.status_code)).inc()
    return response


def _prediction(probabilities) -> dict:
    best = int(probabilities.argmax())
    return {
        "prediction": best,
        "class": CLASS_NAMES[best],
        "probabilities": {name: float(p) for name, p in zip(CLASS_NAMES, probabilities)},
        "confidence": float(probabilities[best]),
    }


@app.post("/predict")
def predict(body: PredictRequest):
    batch = isinstance(body.features[0], list)
    rows = body.features if batch else [body.features]
    probabilities = MODEL.predict_proba(rows)
    if batch:
        return {"predictions": [_prediction(p) for p in probabilities]}
    return _prediction(probabilities[0])


@app.get("/ready")
def ready():
    # The model is trained before the server starts listening: a pod that answers is ready.
    return {"status": "ready"}


@app.get("/health")
def health():
    return {"status": "ok"}


@app.get("/metrics")
def metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
