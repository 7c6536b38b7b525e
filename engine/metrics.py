"""What a fold scores: per-batch counts kept on the device, macro F1, loss and F1 of a split,
and the positive class's F1, precision and recall."""
import torch
from torch import nn

from composed_loader import TensorBatchLoader

EVAL_BATCH_SIZE = 512


def batch_counts(logits, y, loss):
    """[loss * n, tp, fp, fn, tn] of one batch, kept on the device (no sync)."""
    pred = logits > 0  # sigmoid(logit) > 0.5
    truth = y > 0.5
    return torch.stack([loss * len(y), (pred & truth).sum(), (pred & ~truth).sum(),
                        (~pred & truth).sum(), (~pred & ~truth).sum()]).float()


def macro_f1(tp, fp, fn, tn):
    """Mean F1 over the classes present in the labels or the predictions."""
    scores = [2 * a / (2 * a + b + c) for a, b, c in ((tp, fp, fn), (tn, fn, fp)) if a + b + c > 0]
    return sum(scores) / len(scores)


def loss_and_f1(counts, n):
    loss_sum, tp, fp, fn, tn = counts.tolist()  # the one sync per pass
    return loss_sum / n, macro_f1(tp, fp, fn, tn)


@torch.no_grad()
def evaluate(model, X, y, device, graphed=None):
    return loss_and_f1(evaluation_counts(model, X, y, device, graphed), len(y))


@torch.no_grad()
def evaluation_counts(model, X, y, device, graphed=None):
    """graphed: a cuda_step.GraphedEvaluation of this model, or None for eager."""
    batches = ((xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
               for xb, yb in TensorBatchLoader(X, y, EVAL_BATCH_SIZE, shuffle=False))
    if graphed is not None:
        return graphed.counts(batches)
    model.eval()
    loss_fn = nn.BCEWithLogitsLoss()
    counts = torch.zeros(5, device=device)
    for xb, yb in batches:
        logits = model(xb)
        counts += batch_counts(logits, yb, loss_fn(logits, yb))
    return counts


def positive_class_scores(model, states, X, y, device):
    """{key_f1_pos, key_precision, key_recall} of each {key: state dict or None}
    on (X, y); a score whose denominator is zero is 0. Null for a None state."""
    scores = {}
    for key, state in states.items():
        values = (None, None, None)
        if state is not None:
            model.load_state_dict(state)
            _, tp, fp, fn, _ = evaluation_counts(model, X, y, device).tolist()
            values = (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                      tp / (tp + fp) if tp + fp else 0.0,
                      tp / (tp + fn) if tp + fn else 0.0)
        scores.update({f"{key}_{name}": value for name, value in zip(("f1_pos", "precision", "recall"), values)})
    return scores
