"""What a fold scores: per-batch counts kept on the device, macro F1, loss and F1 of a split,
and the positive class's F1, precision and recall."""
import torch
from torch import nn

from composed_loader import TensorBatchLoader

EVAL_BATCH_SIZE = 512


def bce_loss(pos_weight=None, device="cpu"):
    """BCE on logits; pos_weight (a number, or None for none) weighs the positive class's terms
    (--pos_weight, the target phase's training and validation loss)."""
    if pos_weight is None:
        return nn.BCEWithLogitsLoss()
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight_tensor(pos_weight, device))


def pos_weight_tensor(pos_weight, device):
    """The one way both loops make it, so a pack's loss is its solo run's (None stays None)."""
    return None if pos_weight is None else torch.tensor(float(pos_weight), device=device)


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
def evaluate(model, X, y, device, graphed=None, loss_fn=None):
    return loss_and_f1(evaluation_counts(model, X, y, device, graphed, loss_fn), len(y))


@torch.no_grad()
def evaluation_counts(model, X, y, device, graphed=None, loss_fn=None):
    """graphed: a cuda_step.GraphedEvaluation of this model, or None for eager. loss_fn: the
    phase's (bce_loss), plain BCE by default."""
    batches = ((xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
               for xb, yb in TensorBatchLoader(X, y, EVAL_BATCH_SIZE, shuffle=False))
    if graphed is not None:
        return graphed.counts(batches)
    model.eval()
    loss_fn = loss_fn or nn.BCEWithLogitsLoss()
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
