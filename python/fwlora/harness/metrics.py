"""Classification metrics of one evaluation: accuracy, F1, macro-F1, per-class recall,
Matthews correlation, confusion."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, matthews_corrcoef, recall_score


def classification_metrics(
    labels: np.ndarray | list[int], preds: np.ndarray | list[int], num_labels: int
) -> dict[str, Any]:
    """acc, f1 (binary: of class 1; else macro), macro_f1 (always the unweighted mean over
    classes: a model that never predicts a class scores 0 on it), recall per class (index =
    label; 0 for a class absent from `labels`), mcc and the confusion matrix [true][pred]."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    classes = list(range(num_labels))
    average = "binary" if num_labels == 2 else "macro"
    # A degenerate epoch (one class predicted) has MCC 0 and F1 0 by definition; sklearn
    # would warn about it, so those cases are handled here.
    single_class = len(np.unique(preds)) < 2 or len(np.unique(labels)) < 2
    return {
        "acc": float(np.mean(labels == preds)) if len(labels) else 0.0,
        "f1": float(f1_score(labels, preds, labels=classes, average=average, zero_division=0.0)),
        "macro_f1": float(
            f1_score(labels, preds, labels=classes, average="macro", zero_division=0.0)
        ),
        "recall": [
            float(r)
            for r in recall_score(labels, preds, labels=classes, average=None, zero_division=0.0)
        ],
        "mcc": 0.0 if single_class else float(matthews_corrcoef(labels, preds)),
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
    }


def primary_metric(task: str) -> str:
    """The metric a task is judged by: Matthews correlation for CoLA (GLUE's rule), else
    accuracy. The one place this rule lives: runs store it as `primary_metric`."""
    return "mcc" if task == "cola" else "acc"
