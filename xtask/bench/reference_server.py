"""The reference for `cargo xtask bench server`: a seed-style Iris API.

FastAPI + uvicorn (one worker) + a scikit-learn decision tree trained at start-up from
model/iris.csv, answering the seeds' POST /predict {"features": [[...]]}. It is what the
seed projects shipped, so our server's numbers are reported as ratios to it.
"""

import csv
import os
from typing import List

from fastapi import FastAPI
from pydantic import BaseModel
from sklearn.tree import DecisionTreeClassifier

CSV = os.environ.get("IRIS_CSV", os.path.join(os.path.dirname(__file__), "..", "..", "model", "iris.csv"))

with open(CSV) as f:
    rows = list(csv.DictReader(f))
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
X = [[float(r[k]) for k in FEATURES] for r in rows]
CLASSES = sorted({r["species"] for r in rows})
y = [CLASSES.index(r["species"]) for r in rows]
model = DecisionTreeClassifier(max_depth=4, random_state=42).fit(X, y)

app = FastAPI()


class Request(BaseModel):
    features: List[List[float]]


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/predict")
def predict(req: Request):
    predictions = model.predict(req.features)
    return {"predictions": [int(p) for p in predictions]}
