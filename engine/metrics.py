"""What a fold scores: per-batch counts kept on the device, macro F1, loss and F1 of a split,
and the positive class's F1, precision and recall (a detector) or each class's (a recognizer).

A detector (two classes) has one logit per window, BCE and counts [loss * n, tp, fp, fn, tn]; a
recognizer of K >= 3 classes has K logits, cross-entropy and counts [loss * n, the K x K confusion
matrix, row = true class]. Every function here tells them apart by the logits' shape or the counts'
length, so the loops that call them need not know which they train.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from composed_loader import TensorBatchLoader

EVAL_BATCH_SIZE = 512


def weights_tensor(weights, device):
    """--pos_weight (one number) or --class_weights (K) as the loss takes it, made one way for a solo
    run and a pack so that their losses are the same (None stays None)."""
    return None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)


def loss_of(logits, y, weights=None):
    """The mean loss of a batch: BCE on one logit per window (weights: the positive class's),
    cross-entropy on K logits (weights: per class; y holds the class ids as floats)."""
    if logits.dim() == 1:
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=weights)
    return F.cross_entropy(logits, y.long(), weight=weights)


class PhaseLoss(nn.Module):
    """A phase's loss (loss_of) with its weights, made once."""

    def __init__(self, weights=None, device="cpu"):
        super().__init__()
        self.weights = weights_tensor(weights, device)

    def forward(self, logits, y):
        return loss_of(logits, y, self.weights)


def count_width(n_classes):
    """How many numbers a batch's counts hold."""
    return 5 if n_classes == 2 else 1 + n_classes * n_classes


def batch_counts(logits, y, loss):
    """The batch's counts (see the module's docstring), kept on the device (no sync)."""
    if logits.dim() == 2:
        return class_counts(logits, y, loss)
    pred = logits > 0  # sigmoid(logit) > 0.5
    truth = y > 0.5
    return torch.stack([loss * len(y), (pred & truth).sum(), (pred & ~truth).sum(),
                        (~pred & truth).sum(), (~pred & ~truth).sum()]).float()


def class_counts(logits, y, loss):
    """[loss * n, confusion matrix] of K logits per window; scatter_add, not bincount, so that a CUDA
    graph can hold it (bincount reads its input's maximum back to the host)."""
    k = logits.shape[1]
    index = y.long() * k + logits.argmax(dim=1)
    confusion = torch.zeros(k * k, device=logits.device).scatter_add_(0, index, torch.ones_like(y))
    return torch.cat([(loss * len(y)).reshape(1), confusion]).float()


def confusion_of(counts):
    """The K x K confusion matrix (lists, row = true class) in counts of K >= 3 classes."""
    values = counts.tolist() if torch.is_tensor(counts) else list(counts)
    k = math.isqrt(len(values) - 1)
    return [values[1 + row * k:1 + (row + 1) * k] for row in range(k)]


def per_class(confusion):
    """[(f1, precision, recall, present)] of each class of a confusion matrix; a score whose
    denominator is zero is 0; present: the class is in the labels or the predictions."""
    k = len(confusion)
    scores = []
    for c in range(k):
        tp = confusion[c][c]
        fp = sum(confusion[r][c] for r in range(k)) - tp
        fn = sum(confusion[c]) - tp
        scores.append((2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0, tp / (tp + fp) if tp + fp else 0.0,
                       tp / (tp + fn) if tp + fn else 0.0, tp + fp + fn > 0))
    return scores


def macro_f1(tp, fp, fn, tn):
    """Mean F1 over the classes present in the labels or the predictions."""
    scores = [2 * a / (2 * a + b + c) for a, b, c in ((tp, fp, fn), (tn, fn, fp)) if a + b + c > 0]
    return sum(scores) / len(scores)


def loss_and_f1(counts, n):
    values = counts.tolist()  # the one sync per pass
    if len(values) == 5:
        loss_sum, tp, fp, fn, tn = values
        return loss_sum / n, macro_f1(tp, fp, fn, tn)
    present = [f1 for f1, _, _, seen in per_class(confusion_of(values)) if seen]
    return values[0] / n, sum(present) / len(present)


@torch.no_grad()
def evaluate(model, X, y, device, graphed=None, loss_fn=None):
    return loss_and_f1(evaluation_counts(model, X, y, device, graphed, loss_fn), len(y))


@torch.no_grad()
def evaluation_counts(model, X, y, device, graphed=None, loss_fn=None):
    """graphed: a cuda_step.GraphedEvaluation of this model, or None for eager. loss_fn: the
    phase's (PhaseLoss), plain BCE (or cross-entropy) by default."""
    batches = ((xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
               for xb, yb in TensorBatchLoader(X, y, EVAL_BATCH_SIZE, shuffle=False))
    if graphed is not None:
        return graphed.counts(batches)
    model.eval()
    loss_fn = loss_fn or PhaseLoss()
    counts = None
    for xb, yb in batches:
        logits = model(xb)
        found = batch_counts(logits, yb, loss_fn(logits, yb))
        counts = found if counts is None else counts + found
    return counts


def positive_class_scores(model, states, X, y, device, names=None):
    """{key_f1_pos, key_precision, key_recall} of each {key: state dict or None} on (X, y); a score
    whose denominator is zero is 0; null for a None state. A recognizer (names: its K >= 3 class
    names) has no positive class: those are null, and key_per_class holds each class's
    {f1, precision, recall} and key_confusion its confusion matrix (row = true class)."""
    scores = {}
    for key, state in states.items():
        values, counts = (None, None, None), None
        if state is not None:
            model.load_state_dict(state)
            counts = evaluation_counts(model, X, y, device)
        if counts is not None and names is None:
            _, tp, fp, fn, _ = counts.tolist()
            values = (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                      tp / (tp + fp) if tp + fp else 0.0,
                      tp / (tp + fn) if tp + fn else 0.0)
        scores.update({f"{key}_{name}": value for name, value in zip(("f1_pos", "precision", "recall"), values)})
        if names is not None:
            confusion = None if counts is None else confusion_of(counts)
            scores[f"{key}_per_class"] = None if confusion is None else {
                name: {"f1": f1, "precision": precision, "recall": recall}
                for name, (f1, precision, recall, _) in zip(names, per_class(confusion))}
            scores[f"{key}_confusion"] = None if confusion is None else [[int(v) for v in row] for row in confusion]
    return scores
