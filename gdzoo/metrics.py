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
    pred, y = _double(prediction).reshape(-1), _double(y).reshape(-1)
    residual = pred - y
    ss_res = float((residual ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:  # constant targets: perfect or not at all (scikit-learn's convention)
        r2 = 1.0 if ss_res == 0 else 0.0
    return {"mse": float((residual ** 2).mean()), "mae": float(residual.abs().mean()), "r2": r2}


def classification(logits: torch.Tensor, y: torch.Tensor, classes: int) -> dict[str, float]:
    """Accuracy, precision, recall, f1 and ROC AUC of logits ([n] if binary, else [n, classes])."""
    if classes <= 2:
        scores = _double(logits).reshape(-1)
        truth = _double(y).reshape(-1) > 0.5
        predicted = scores > 0
        precision, recall, f1 = _precision_recall_f1(predicted, truth)
        return {"accuracy": _mean(predicted == truth), "precision": precision, "recall": recall,
                "f1": f1, "roc_auc": roc_auc(scores, truth)}
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


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Exact area under the ROC curve (Mann–Whitney U with average ranks for ties); NaN for one class."""
    scores, positive = _double(scores).reshape(-1), positive.detach().cpu().reshape(-1).bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()  # the highest 1-based rank of each distinct score
    average_rank = last - (counts.double() - 1) / 2
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _precision_recall_f1(predicted: torch.Tensor, truth: torch.Tensor) -> tuple[float, float, float]:
    tp = int((predicted & truth).sum())
    n_predicted, n_true = int(predicted.sum()), int(truth.sum())
    precision = tp / n_predicted if n_predicted else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _double(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _mean(mask: torch.Tensor) -> float:
    return float(mask.double().mean())
