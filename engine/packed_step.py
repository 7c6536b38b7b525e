"""The packed training step: every member of a pack trained at once, each exactly as alone.

The members' parameters are stacked and trained in one step (torch.func.functional_call +
vmap) with StackedAdamW, torch.optim.AdamW over stacked parameters with one learning rate
and step count per member. PackedStep runs over fixed buffers, so one CUDA graph can replay
every step, partial batches included; train_pack drives the epochs and early stopping of
each member as engine.phase.train_phase does for a solo run. A member whose validation loss is
not finite stops there and is reported (on_failed); the others go on.

On the CPU the forward, backward and validation run member by member over each member's real
windows, with its solo run's kernels, so a CPU pack repeats its solo runs to the bit over any
number of epochs (tests/test_pack_drift.py); on CUDA they are vmapped (one graph per step),
where batched kernels round otherwise (bench/gpu_check.py states the tolerance).
"""
import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from engine.adamw import StackedAdamW
from engine.device import graphs_wanted
from engine.fileio import ConfigError
from engine.metrics import EVAL_BATCH_SIZE, batch_counts, count_width, loss_and_f1, loss_of, weights_tensor
from engine.models import dropout_layers
from engine.phase import NotFiniteError, PhaseTracker, epochs

log = logging.getLogger("experiment")


@dataclass
class PhaseJob:
    """What one member trains in one phase: its start, batches (a loader over indices into the
    pack's store), validation windows (indices into the store), early stopping, and the draws
    and loss its solo run's phase has."""
    label: str
    state: dict
    loader: object
    val: object
    patience: int
    augment: object  # its augmenter, or None
    first_epoch: int
    lr: float
    metric: str = "loss"  # --early_stopping_metric
    weights: object = None  # its loss weights in the target phase: --pos_weight or --class_weights
    dropout: object = None  # its dropout generator (engine.phase.phase_generators)


def member_forward(model, member_tensors, x, mask):
    """One member's logits; mask: its dropout mask (drawn from its own generator), None without dropout."""
    return functional_call(model, member_tensors, (x,), {} if mask is None else {"dropout_mask": mask})


class MemberLosses:
    """Each member's loss as its solo run computes it (engine.metrics.loss_of, with its own weights):
    one member at a time (the CPU's exact path), or every member at once over padded rows (vmapped:
    a row per member, the padding weighed out)."""

    def __init__(self, weights, n_classes, device):
        self.weights = [weights_tensor(w, device) for w in weights]
        width = 1 if n_classes == 2 else n_classes
        self.table = None if all(w is None for w in weights) else torch.stack([
            torch.ones(width, device=device) if w is None else w.reshape(width) for w in self.weights])

    def one(self, i, logits, y):
        return loss_of(logits, y, self.weights[i])

    def padded(self, logits, y, real):
        """Each member's mean loss over its real windows (a detector's BCE averages over windows, a
        recognizer's weighted cross-entropy over the weights of their classes, as torch's do)."""
        real = real.to(logits.dtype)
        if logits.dim() == 2:
            per_window = F.binary_cross_entropy_with_logits(logits, y, reduction="none", pos_weight=self.table)
            return (per_window * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
        per_window = F.cross_entropy(logits.permute(0, 2, 1), y.long(), reduction="none")
        weight = real if self.table is None else real * self.table.gather(1, y.long())
        return (per_window * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1e-12)


def member_counts(logits, y, losses, real):
    """engine.metrics.batch_counts of every member (one row each) over its real windows only."""
    if logits.dim() == 3:  # K logits a window: [loss * n, the confusion matrix]
        k = logits.shape[2]
        index = y.long() * k + logits.argmax(dim=2)
        confusion = torch.zeros((len(y), k * k), device=y.device).scatter_add_(1, index, real.to(y.dtype))
        return torch.cat([(losses * real.sum(dim=1)).unsqueeze(1), confusion], dim=1).float()
    pred, truth = logits > 0, y > 0.5
    return torch.stack([losses * real.sum(dim=1), (pred & truth & real).sum(dim=1),
                        (pred & ~truth & real).sum(dim=1), (~pred & truth & real).sum(dim=1),
                        (~pred & ~truth & real).sum(dim=1)], dim=1).float()


class PackedStep:
    """One training step of every member at once, over fixed buffers, so that it can be
    captured as one CUDA graph and replayed for every step, partial batches included.

    load() gathers every stepping member's batch from the store into x and y in one indexed
    operation (rows past a member's window count are padding); sizes holds its window count
    (0 for a member not stepping now). The loss weighs the padding out and the optimizer leaves
    members outside `active` as they are. Each member's [loss * n, tp, fp, fn, tn] adds up in
    counts (a row per member).
    """

    def __init__(self, model, stacked, optimizer, batch_size, store, weights):
        k, device = len(optimizer.lr), store.device
        self.model, self.stacked, self.optimizer, self.store = model, stacked, optimizer, store
        self.n_classes = getattr(model, "n_classes", 2)
        self.losses = MemberLosses(weights, self.n_classes, device)
        dropout = dropout_layers(model)
        self.dropout = dropout[0] if dropout else None
        # Each stepping member's mask is drawn in load() from its own generator, as its solo run's
        # forward draws it, so that the step (and its CUDA graph) draws nothing itself.
        self.mask = torch.ones((k, batch_size, model.feature_width()), device=device) if self.dropout else None
        self.x = torch.zeros((k, batch_size, *store.X.shape[1:]), device=device)
        self.y = torch.zeros((k, batch_size), device=device)
        self.index = torch.zeros((k, batch_size), dtype=torch.long, device=store.X.device)
        self.sizes = torch.zeros(k, dtype=torch.long, device=device)
        self.active = torch.zeros(k, dtype=torch.bool, device=device)
        self.positions = torch.arange(batch_size, device=device)
        self.counts = torch.zeros((k, count_width(self.n_classes)), device=device)
        self.graph = None
        self.by_member = device.type == "cpu"  # the exact path (_member_by_member); else vmapped

    def _forward(self, member_tensors, x, mask=None):
        return member_forward(self.model, member_tensors, x, mask)

    def _compute(self):
        real = self.positions < self.sizes.view(-1, 1)
        if self.by_member:
            logits, losses = self._member_by_member()
        else:
            inputs = (self.stacked, self.x) if self.mask is None else (self.stacked, self.x, self.mask)
            logits = vmap(self._forward)(*inputs)
            losses = self.losses.padded(logits, self.y, real)
            losses.sum().backward()
        self.optimizer.step(self.active)
        self.counts += member_counts(logits.detach(), self.y, losses.detach(), real)

    def _member_by_member(self):
        """The CPU's forward and backward: each stepping member over its real windows alone, with
        the kernels and the loss its solo run uses (vmap's batched kernels and the padded rows
        round otherwise, and training carries that on), so a CPU pack repeats its members' solo
        runs to the bit. (logits, zero past a member's windows; each member's mean loss)"""
        shape = self.y.shape if self.n_classes == 2 else (*self.y.shape, self.n_classes)
        logits, losses, total = torch.zeros(shape), torch.zeros(len(self.x)), 0
        for i, n in enumerate(self.sizes.tolist()):
            if n:
                out = self._forward({name: tensor[i] for name, tensor in self.stacked.items()}, self.x[i, :n],
                                    None if self.mask is None else self.mask[i, :n])
                loss = self.losses.one(i, out, self.y[i, :n])
                logits[i, :n], losses[i], total = out.detach(), loss.detach(), total + loss
        if torch.is_tensor(total):
            total.backward()
        else:  # no member steps (a warm-up): zero gradients, as the vmapped step has
            for p in self.optimizer.params.values():
                p.grad = torch.zeros_like(p)
        return logits, losses

    def capture(self, setting):
        """Replay the step from a CUDA graph from now on; when capture fails, run eagerly
        (--cuda_graphs auto, saying so in the log) or raise (on). No member is active
        before the first load(), so the warm-up steps change no parameter or optimizer state."""
        from engine import cuda_step  # CUDA only
        try:
            self.graph = cuda_step.capture(self._compute, "packed training step")
        except cuda_step.CaptureError as error:
            if setting == "on":
                raise ConfigError(f"--cuda_graphs on: capture failed: {error}") from None
            log.warning(f"CUDA graph capture failed ({error}); this phase runs eagerly")
            for p in self.optimizer.params.values():  # a capture cut short may leave gradients behind
                p.grad = None
        self.counts.zero_()

    def load(self, batches, augments, generators):
        """batches: {member: index tensor into the store} of the members that step now; augments:
        {member: its augmenter}, applied to its real windows only, with its own generator;
        generators: {member: its dropout generator}, each stepping member's mask drawn from its own."""
        sizes = [0] * len(self.x)
        for i, index in batches.items():
            self.index[i, :len(index)] = index
            sizes[i] = len(index)
        self.store.gather_into(self.index, self.x, self.y)
        for i, augment in augments.items():
            if sizes[i]:
                self.x[i, :sizes[i]] = augment(self.x[i, :sizes[i]])
        if self.dropout is not None:
            for i in batches:
                self.mask[i, :sizes[i]] = self.dropout.draw((sizes[i], self.mask.shape[2]), self.mask.device,
                                                            generators[i])
        self.sizes.copy_(torch.tensor(sizes))
        self.active.copy_(self.sizes > 0)

    def run(self):
        if self.graph is not None:
            self.graph.replay()
        else:
            self._compute()


class PackedValidation:
    """Every member's validation windows scored in one vmapped pass per chunk of CHUNK windows
    a member: [loss sum, tp, fp, fn, tn] per member, as engine.metrics.evaluation_counts gives a
    solo run (the windows past a member's own count are padding, left out)."""

    CHUNK = 512

    def __init__(self, model, stacked, store, indices, weights):
        self.model, self.stacked, self.store = model, stacked, store
        self.n_classes = getattr(model, "n_classes", 2)
        self.losses = MemberLosses(weights, self.n_classes, store.device)
        longest = max(len(index) for index in indices)
        self.index = torch.zeros((len(indices), longest), dtype=torch.long, device=store.X.device)
        for i, index in enumerate(indices):
            self.index[i, :len(index)] = index
        self.sizes = torch.tensor([len(index) for index in indices], device=store.device)
        self.by_member = store.device.type == "cpu"  # the exact path (_member_by_member); else vmapped

    def _forward(self, member_tensors, x):
        return member_forward(self.model, member_tensors, x, None)

    @torch.no_grad()
    def counts(self):
        if self.by_member:
            return self._member_by_member()
        counts = torch.zeros((len(self.index), count_width(self.n_classes)), device=self.store.device)
        k, longest = self.index.shape
        for start in range(0, longest, self.CHUNK):
            index = self.index[:, start:start + self.CHUNK]
            x = torch.empty((k, index.shape[1], *self.store.X.shape[1:]), device=self.store.device)
            y = torch.empty(index.shape, device=self.store.device)
            self.store.gather_into(index, x, y)
            logits = vmap(self._forward)(self.stacked, x)
            real = (start + torch.arange(index.shape[1], device=x.device)) < self.sizes.view(-1, 1)
            means = self.losses.padded(logits, y, real)  # member_counts scales them back
            counts += member_counts(logits, y, means, real)
        return counts

    def _member_by_member(self):
        """The CPU's validation: each member's own windows in the solo run's batches, kernels and
        loss (engine.metrics.evaluation_counts), so its early stopping decides as alone."""
        counts = torch.zeros((len(self.index), count_width(self.n_classes)))
        for i, n in enumerate(self.sizes.tolist()):
            member = {name: tensor[i] for name, tensor in self.stacked.items()}
            for start in range(0, n, EVAL_BATCH_SIZE):
                x, y = self.store.gather(self.index[i, start:min(start + EVAL_BATCH_SIZE, n)])
                logits = self._forward(member, x)
                counts[i] += batch_counts(logits, y, self.losses.one(i, logits, y))
        return counts


def stack_states(states, device):
    """{name: the members' tensors stacked} on the device. Each moves there first: a pack's starts
    come from the cache (host memory), from its own base pack (the device) or are fresh."""
    return {name: torch.stack([state[name].to(device) for state in states]) for name in states[0]}


def member_state(stacked, i):
    return {name: tensor[i].detach().clone() for name, tensor in stacked.items()}


def largest_batch(jobs, batch_size):
    """The most windows a batch of any member holds: never more than its loader's data (a
    --batch_size far above the data would otherwise size the step's buffers)."""
    return max(min(batch_size, len(job.loader.X)) for job in jobs)


def train_pack(phase, jobs, model, store, settings, on_done, on_failed, trained=None):
    """Train every job's model together until each has stopped; on_done(i, result) is
    called as job i stops, with what engine.phase.train_phase returns for a solo run, and
    on_failed(i, error) as it stops on a validation loss that is not finite (NotFiniteError).
    store: the pack's data (engine.pack.Store). settings: the flags every member shares
    (batch_size, max_epochs, cuda_graphs). trained: the names of the parameters the phase trains
    (None: all; --finetune_layers head: the head's)."""
    k, device = len(jobs), store.device
    stacked = stack_states([job.state for job in jobs], device)
    params = {name: stacked[name].requires_grad_() for name, _ in model.named_parameters()
              if trained is None or name in trained}
    optimizer = StackedAdamW(params, [job.lr for job in jobs], device)
    model.eval()  # dropout takes each member's masks, drawn by PackedStep.load
    weights = [job.weights for job in jobs]
    step = PackedStep(model, stacked, optimizer, largest_batch(jobs, settings.batch_size), store, weights)
    if graphs_wanted(settings.cuda_graphs, device):
        step.capture(settings.cuda_graphs)
    validation = PackedValidation(model, stacked, store, [job.val for job in jobs], weights)

    trackers = [PhaseTracker(job.label, phase, job.first_epoch, job.patience, job.metric) for job in jobs]
    running, max_epochs = list(range(k)), settings.max_epochs
    for epoch in epochs(max_epochs):
        start = time.perf_counter()
        batches = {i: iter(jobs[i].loader) for i in running}
        n_steps = max(len(jobs[i].loader) for i in running)
        step.counts.zero_()
        seen = {i: 0 for i in running}
        for number in range(n_steps):
            stepping = [i for i in running if number < len(jobs[i].loader)]
            indices = {i: next(batches[i])[0] for i in stepping}
            for i in stepping:
                seen[i] += len(indices[i])
            step.load(indices, {i: jobs[i].augment for i in stepping if jobs[i].augment is not None},
                      {i: jobs[i].dropout for i in stepping})
            step.run()
        val_counts = validation.counts()
        counts, val_counts = step.counts.cpu(), val_counts.cpu()  # waits for the epoch's work (queued, on a GPU)
        elapsed = time.perf_counter() - start
        for i in list(running):
            try:
                stops = end_epoch(phase, jobs[i], trackers[i], stacked, i, epoch, counts[i], seen[i], val_counts[i],
                                  elapsed, max_epochs)
            except NotFiniteError as error:  # it steps no more; its NaN stays in its own rows of the stack
                running.remove(i)
                on_failed(i, error)
                continue
            if stops:
                running.remove(i)
                on_done(i, trackers[i].result(step.graph is not None, getattr(model, "fast_kernels", False)))
        if not running:
            break


def end_epoch(phase, job, tracker, stacked, i, epoch, counts, n, val_counts, elapsed, max_epochs):
    """Record member i's epoch in its tracker, as train_phase does; True when it stops here."""
    train_loss, train_f1 = loss_and_f1(counts, n)
    val_loss, val_f1 = loss_and_f1(val_counts, len(job.val))
    stops = tracker.end_epoch((train_loss, val_loss, train_f1, val_f1), n, elapsed, lambda: member_state(stacked, i))
    log.debug(f"{job.label} {phase} epoch {job.first_epoch + epoch}: train loss {train_loss:.4f} f1 {train_f1:.3f} | "
              f"val loss {val_loss:.4f} f1 {val_f1:.3f}")
    return stops or epoch + 1 == max_epochs  # never with --max_epochs none
