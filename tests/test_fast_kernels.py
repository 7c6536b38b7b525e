"""--cpu_kernels fast (the default on the CPU): the same model computed channels-last, so only float
rounding differs from the engine's historic kernels (--cpu_kernels reference). Stated tolerance:
curves within 1e-4 relative, and the same best epochs; measured over 60 epochs of tiny data, the
curves differ by about 1e-6 relative."""
import json
import math

import pytest
import torch

from engine import cli as engine_cli
from engine.models import MODELS, build_model
from tiny_data import write_tiny_dataset

TOLERANCE = 1e-4


# Every architecture the flags can build: the registry's models, and `test` shaped as the lab's
# manuscript model (dilation, dropout), with residual blocks, and with five blocks and four classes.
ARCHITECTURES = [(name, {}, 2) for name in sorted(MODELS)] + [
    ("test", {"base_channels": 16, "use_dilation": True, "dropout": 0.5}, 2),
    ("test", {"base_channels": 6, "use_residual": True, "use_dilation": True}, 2),
    ("test", {"num_blocks": 5}, 4)]


def both_ways(model, x):
    """[(output, parameter gradients)] of the reference kernels, then the fast ones."""
    results = []
    for fast in (False, True):
        model.fast_kernels = fast
        model.zero_grad()
        out = model(x)
        out.sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    return results


@pytest.mark.parametrize("name, architecture, classes", ARCHITECTURES)
def test_the_fast_kernels_compute_the_same_outputs_and_gradients(name, architecture, classes):
    torch.manual_seed(0)
    model = build_model(name, 6, architecture=architecture, n_classes=classes).eval()  # eval: dropout draws nothing
    x = torch.randn(4, 6, 301)  # an odd length: the pools' floor and ceil modes matter
    called = []
    model.features[0][0].register_forward_hook(lambda *_: called.append(model.fast_kernels))  # the reference way
    results = both_ways(model, x)
    assert called == [False]  # the fast way does not run the blocks' convolutions as modules
    (ref_out, ref_grads), (out, grads) = results
    assert torch.allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    for ref, grad in zip(ref_grads, grads):
        assert torch.allclose(grad, ref, rtol=1e-4, atol=1e-6)


def test_a_fold_with_the_fast_kernels_has_the_reference_best_epochs_and_curves(tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, sizes=(30, 10, 10))
    curves = {}
    for kernels in ("reference", "fast"):
        argv = ["--data_path", str(data), "--fold", "1", "--batch_size", "8", "--max_epochs", "8", "--device", "cpu",
                "--use_augmentation", "--early_stopping_patience", "3", "--early_stopping_patience_target", "3",
                "--experiments_dir", str(tmp_path / kernels), "--cpu_kernels", kernels, "--no_base_cache"]
        assert engine_cli.main(argv, enhanced=True) == 0
        folder = tmp_path / kernels / "experiment" / "fold1_b"
        curves[kernels] = json.loads((folder / "losses.json").read_text())
        assert json.loads((folder / "hyperparameters.json").read_text())["cpu_kernels"] == kernels
    reference, fast = curves["reference"], curves["fast"]
    for key in ("epoch", "transition_epoch", "best_base_epoch", "best_target_epoch"):
        assert fast[key] == reference[key], key
    for key, curve in reference.items():
        if isinstance(curve, list) and key != "epoch":
            for a, b in zip(curve, fast[key]):
                assert (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=TOLERANCE)), key
