"""Task metrics of a trained model's predictions: regression (mse, mae, r2) and classification.

Every function takes tensors and returns plain Python floats (NaN where a metric is undefined,
e.g. ROC AUC when the targets hold a single class).  Conventions follow scikit-learn: precision,
recall and f1 are 0 where their denominator is 0; multi-class scores are macro averages over the
classes that occur in the targets or the predictions; multi-class ROC AUC is one-vs-rest on the
softmax probabilities, averaged over the classes that occur in the targets.
"""

from __future__ import annotations

import math

import torch


def regression(prediction: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Mean squared error, mean absolute error and R² (1 − SS_res/SS_tot) of predictions."""
    return regression_rows(prediction.reshape(1, -1), y)[0]


def regression_rows(predictions: torch.Tensor, y: torch.Tensor) -> list[dict[str, float]]:
    """:func:`regression` of each row of stacked predictions [K, ...] (K configurations at once)."""
    pred, y = _double(predictions).reshape(len(predictions), -1), _double(y).reshape(-1)
    residual = pred - y
    squares = residual ** 2
    ss_res = squares.sum(1).tolist()
    mse, mae = squares.mean(1).tolist(), residual.abs().mean(1).tolist()
    ss_tot = float(((y - y.mean()) ** 2).sum())
    rows = []
    for k in range(len(pred)):
        if ss_tot > 0:
            r2 = 1.0 - ss_res[k] / ss_tot
        else:  # constant targets: perfect or not at all (scikit-learn's convention)
            r2 = 1.0 if ss_res[k] == 0 else 0.0
        rows.append({"mse": mse[k], "mae": mae[k], "r2": r2})
    return rows


def classification(logits: torch.Tensor, y: torch.Tensor, classes: int) -> dict[str, float]:
    """Accuracy, precision, recall, f1 and ROC AUC of logits ([n] if binary, else [n, classes])."""
    if classes <= 2:
        return classification_rows(logits.reshape(1, -1), y, classes)[0]
    logits = _double(logits)
    truth = y.detach().cpu().reshape(-1).long()
    predicted = logits.argmax(dim=1)
    labels = torch.unique(torch.cat([truth, predicted])).tolist()
    per_class = [_precision_recall_f1(predicted == c, truth == c) for c in labels]
    probabilities = torch.softmax(logits, dim=1)
    aucs = [roc_auc(probabilities[:, c], truth == c) for c in range(logits.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    macro = [sum(scores) / len(scores) for scores in zip(*per_class)]
    return {"accuracy": _mean(predicted == truth), "precision": macro[0], "recall": macro[1], "f1": macro[2],
            "roc_auc": sum(aucs) / len(aucs) if aucs else math.nan}


def classification_rows(logits: torch.Tensor, y: torch.Tensor, classes: int) -> list[dict[str, float]]:
    """:func:`classification` of each row of stacked logits ([K, n] binary, [K, n, classes] else)."""
    if classes > 2:
        return [classification(row, y, classes) for row in logits]
    scores = _double(logits).reshape(len(logits), -1)
    truth = _double(y).reshape(-1) > 0.5
    predicted = scores > 0
    tp = (predicted & truth).sum(1).tolist()
    n_predicted, n_true = predicted.sum(1).tolist(), int(truth.sum())
    accuracy = (predicted == truth).double().mean(1).tolist()
    aucs = roc_auc_rows(scores, truth)
    rows = []
    for k in range(len(scores)):
        precision, recall, f1 = _scores(tp[k], n_predicted[k], n_true)
        rows.append({"accuracy": accuracy[k], "precision": precision, "recall": recall, "f1": f1, "roc_auc": aucs[k]})
    return rows


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Exact area under the ROC curve (Mann–Whitney U with average ranks for ties); NaN for one class."""
    return roc_auc_rows(_double(scores).reshape(1, -1), positive)[0]


def roc_auc_rows(scores: torch.Tensor, positive: torch.Tensor) -> list[float]:
    """:func:`roc_auc` of each row of stacked scores [K, n] against one set of labels [n]."""
    scores, positive = _double(scores).contiguous(), positive.detach().cpu().reshape(-1).bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return [math.nan] * len(scores)
    K, n = scores.shape
    ordered, order = scores.sort(dim=1)
    # Tied scores share the average of their 1-based ranks, (first + last) / 2: exact in float64.
    # Groups of ties, numbered across all rows (each row starts a group, so none spans two rows):
    starts = torch.ones(K, n, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts = starts.reshape(-1)
    group = starts.cumsum(0) - 1  # the group of each sorted element
    first = starts.nonzero().squeeze(1)  # where each group starts
    last = torch.cat([first[1:] - 1, torch.tensor([K * n - 1])])
    average = ((first % n) + (last % n) + 2).double() / 2
    rank_sum = (average[group].view(K, n) * positive[order]).sum(1)
    return ((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).tolist()


def _precision_recall_f1(predicted: torch.Tensor, truth: torch.Tensor) -> tuple[float, float, float]:
    return _scores(int((predicted & truth).sum()), int(predicted.sum()), int(truth.sum()))


def _scores(tp: int, n_predicted: int, n_true: int) -> tuple[float, float, float]:
    precision = tp / n_predicted if n_predicted else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _double(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _mean(mask: torch.Tensor) -> float:
    return float(mask.double().mean())
