"""Training and evaluation steps captured as CUDA graphs and replayed.

The `test` CNN is far too small to fill a GPU: an eager step is bound by kernel
launches and Python. Capturing the whole step (forward, loss, backward,
optimizer step, the batch's metric counts) once per phase and replaying it for
every full batch removes that cost without changing what is computed.

What stays as the engine has it: the loader's batch order and composition (each
batch is gathered as before, then copied into the graph's static input), the
augmentation (applied to the gathered batch before the copy, with the same
generator), and the last partial batch of an epoch (run eagerly, so it is scored
on its real windows only). Nothing here syncs with the host per batch.
"""
import torch

from engine.metrics import PhaseLoss, batch_counts, count_width

WARMUP_STEPS = 3  # on a side stream before capture, as torch.cuda.graphs' docs ask


class CaptureError(Exception):
    """Capturing a step failed; the message is one line saying why."""


class CudaGraphs:
    """The CUDA side of a capture: a side stream for the warm-up and a graph to capture into.
    Everything else here is plain torch; tests put an eager stand-in in GRAPHS to run it all on
    the CPU (tests/test_cuda_graphs.py)."""

    def warm_up(self, work):
        """work() on a side stream, as torch.cuda.graphs' docs ask; rejoined however it ends."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                work()
        finally:
            torch.cuda.current_stream().wait_stream(stream)

    def capture(self, work, before):
        """A graph whose replay() does what before() then work() do: before() runs once, eagerly,
        and work() is captured."""
        before()
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph):
                work()
        finally:  # a failed capture must not leave the eager fallback on the capture stream
            torch.cuda.set_stream(stream)
            torch.cuda.synchronize()
        return graph


GRAPHS = CudaGraphs()


def _describe(error):
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()


def capture(step, what, before_capture=None):
    """step() as a graph to replay: run WARMUP_STEPS times on a side stream, then before_capture()
    if given, then captured. CaptureError (one line, naming `what`) when an op cannot be captured.
    engine.packed_step captures its packed step with it too."""
    try:
        GRAPHS.warm_up(lambda: [step() for _ in range(WARMUP_STEPS)])
        return GRAPHS.capture(step, before_capture or (lambda: None))
    except Exception as error:  # any op that cannot be captured
        raise CaptureError(f"{what}: {_describe(error)}") from None


class GraphedTraining:
    """One phase's training step as a CUDA graph over batches of exactly `batch_size`.

    Built once per phase, before its first step: warm-up steps change the model and
    the optimizer, so both are put back exactly as they were (a fresh optimizer state)
    before the first real batch.
    """

    def __init__(self, model, optimizer, example, batch_size, device, loss_fn=None, dropout=None):
        X, y = example
        self.model, self.optimizer, self.batch_size = model, optimizer, batch_size
        self.loss_fn, self.dropout = loss_fn or PhaseLoss(), dropout
        # The graph cannot draw from the phase's dropout generator: a full batch's mask is drawn
        # before each replay (as the eager forward would draw it) into this buffer.
        self.mask = torch.ones((batch_size, model.feature_width()), device=device) if dropout else None
        self.x = torch.zeros((batch_size, *X.shape[1:]), dtype=X.dtype, device=device)
        self.y = torch.zeros((batch_size, *y.shape[1:]), dtype=y.dtype, device=device)
        self.x.copy_(X[:batch_size])  # from host memory when the data did not fit on the device
        self.y.copy_(y[:batch_size])
        # summed over the epoch inside the graph
        self.counts = torch.zeros(count_width(getattr(model, "n_classes", 2)), device=device)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            model.train()
            # set_to_none before the capture: the graph allocates its own gradients.
            self.graph = capture(self._step, "training step", lambda: optimizer.zero_grad(set_to_none=True))
        finally:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(saved[k])
            for state in optimizer.state.values():  # as if no step had been taken
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()
            self.counts.zero_()

    def _step(self):
        logits = self.model(self.x) if self.mask is None else self.model(self.x, dropout_mask=self.mask)
        loss = self.loss_fn(logits, self.y)
        loss.backward()
        self.optimizer.step()
        self.counts.add_(batch_counts(logits.detach(), self.y, loss.detach()))

    def epoch(self, loader, augment):
        """One epoch: full batches replay the graph; a partial one runs eagerly. Returns
        (counts on the device, windows seen)."""
        self.model.train()
        self.counts.zero_()
        n = 0
        for xb, yb in loader:
            xb, yb = xb.to(self.x.device, non_blocking=True), yb.to(self.x.device, non_blocking=True)
            if augment is not None:
                xb = augment(xb)
            if len(yb) == self.batch_size:
                self.x.copy_(xb)
                self.y.copy_(yb)
                if self.mask is not None:
                    self.mask.copy_(self.dropout.draw(self.mask.shape, self.mask.device))
                self.graph.replay()
            else:
                # The graph's gradients stay in place; zero them so backward writes fresh ones.
                self.optimizer.zero_grad(set_to_none=False)
                logits = self.model(xb)
                loss = self.loss_fn(logits, yb)
                loss.backward()
                self.optimizer.step()
                self.counts.add_(batch_counts(logits.detach(), yb, loss.detach()))
            n += len(yb)
        return self.counts, n


class GraphedEvaluation:
    """Evaluation passes replayed from one graph per batch size (the model's weights are
    read where they live, so loading a state dict in place keeps the graphs valid)."""

    def __init__(self, model, loss_fn=None):
        self.model = model
        self.loss_fn = loss_fn or PhaseLoss()
        self.graphs = {}  # batch size: (graph, x, y, counts)

    def _capture(self, xb, yb):
        x, y = xb.clone(), yb.clone()
        counts = torch.zeros(count_width(getattr(self.model, "n_classes", 2)), device=x.device)

        def forward():
            logits = self.model(x)
            counts.add_(batch_counts(logits, y, self.loss_fn(logits, y)))

        with torch.no_grad():
            graph = capture(forward, "evaluation step")  # the warm-up's counts are zeroed before each replay
        return graph, x, y, counts

    @torch.no_grad()
    def counts(self, batches):
        """Summed [loss * n, tp, fp, fn, tn] over (X, y) batches on the device."""
        self.model.eval()
        total = None
        for xb, yb in batches:
            if len(yb) not in self.graphs:
                self.graphs[len(yb)] = self._capture(xb, yb)
            graph, x, y, counts = self.graphs[len(yb)]
            x.copy_(xb)
            y.copy_(yb)
            counts.zero_()
            graph.replay()
            total = counts.clone() if total is None else total + counts
        return total
