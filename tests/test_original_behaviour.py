"""`--preset original` and the flags it sets, and the metric keys' original meanings."""
import json

import pytest
import torch

from composed_loader import ComposedBatchDataLoader
from engine import cli as engine_cli
from engine import fold as engine_fold
from engine import metrics as engine_metrics
from engine.augment import BatchAugmenter, make_augmenter
from engine.fold import subsample
from engine.models import build_model
from tiny_data import write_tiny_dataset

TARGET_TAG = 100.0  # X[:, 0, 0] of the target's train windows, to tell them apart in a batch
SIZES = (60, 30, 10)  # train, val, test windows per participant


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four participants; the target "a" has 60 train windows, enough for 57 per batch of 64."""
    folder = tmp_path_factory.mktemp("data")
    write_tiny_dataset(folder, participants=("a", "b", "c", "d"), window=16, sizes=SIZES)
    X, y = torch.load(folder / "a_train.pt", weights_only=True)
    X[:, 0, 0] = TARGET_TAG
    torch.save((X, y), folder / "a_train.pt")
    return folder


def parse(*argv):
    return engine_cli.build_parser(enhanced=True).parse_args([str(a) for a in argv])


def test_the_preset_resolves_into_plain_flag_values():
    args = parse("--preset", "original")
    assert (args.lr, args.early_stopping_patience, args.early_stopping_patience_target) == (3e-4, 40, 40)
    assert (args.base_val_pct, args.target_val_pct) == (0.5, 0.1)
    assert (args.target_count, args.epoch_rule, args.augmentation) == ("floor", "shortest", "batch")
    assert (args.jitter_std, args.magnitude_range, args.aug_prob) == (0.005, [0.98, 1.02], 0.3)
    # Without it: this project's defaults, as before the preset existed.
    args = parse()
    assert (args.lr, args.early_stopping_patience, args.early_stopping_patience_target) == (1e-3, 10, 10)
    assert (args.base_val_pct, args.target_val_pct) == (1.0, 1.0)
    assert (args.target_count, args.epoch_rule, args.augmentation) == ("round", "target_pass", "window")
    assert (args.jitter_std, args.magnitude_range, args.aug_prob) == (0.03, [0.9, 1.1], 0.5)
    # train.py has no composed batches, so no epoch rule; the rest resolves the same.
    plain = engine_cli.build_parser(enhanced=False).parse_args(["--preset", "original"])
    assert not hasattr(plain, "epoch_rule") and plain.target_count == "floor"


def test_explicit_flags_override_the_preset_in_any_order():
    for argv in (["--preset", "original", "--lr", "0.01", "--target_count", "round"],
                 ["--lr", "0.01", "--target_count", "round", "--preset", "original"]):
        args = parse(*argv)
        assert (args.lr, args.target_count) == (0.01, "round")
        assert (args.early_stopping_patience, args.epoch_rule) == (40, "shortest")
    # The preset's list value is a fresh copy per parse, never shared.
    parse("--preset", "original").magnitude_range.append(9)
    assert parse("--preset", "original").magnitude_range == [0.98, 1.02]


def run_spied(monkeypatch, data, tmp_path, *extra):
    """A full_fine_tuning fold with batch 64 and target_batch_pct 0.9, recording the size of
    every evaluated split and the fine-tuning loader."""
    sizes, loaders = [], []
    evaluate, target_loader = engine_metrics.evaluate, engine_fold.target_loader

    def spy_evaluate(model, X, y, device, *graphed):
        sizes.append(len(X))
        return evaluate(model, X, y, device, *graphed)

    def spy_loader(*args):
        loaders.append(target_loader(*args))
        return loaders[-1]
    monkeypatch.setattr("engine.phase.evaluate", spy_evaluate)  # the phases' validation
    monkeypatch.setattr("engine.fold.evaluate", spy_evaluate)  # the final scores
    monkeypatch.setattr("engine.fold.target_loader", spy_loader)
    argv = ["--data_path", data, "--experiments_dir", tmp_path / "exp", "--base_cache_dir", tmp_path / "cache",
            "--device", "cpu", "--batch_size", "64", "--max_epochs", "2", "--target_batch_pct", "0.9",
            "--mode", "full_fine_tuning", "--prefix", "p", *extra]
    assert engine_cli.main([str(a) for a in argv], enhanced=True) == 0
    folder = tmp_path / "exp" / "p" / "fold0_a"
    hyper = json.loads((folder / "hyperparameters.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    return sizes, loaders[0], hyper, metrics


def target_windows_per_batch(loader):
    return [int((xb[:, 0, 0] == TARGET_TAG).sum()) for xb, _ in loader]


def test_the_preset_runs_the_originals_validation_subsets_and_composition(monkeypatch, data, tmp_path):
    sizes, loader, hyper, metrics = run_spied(monkeypatch, data, tmp_path, "--preset", "original")
    n_val, n_test = SIZES[1], SIZES[2]
    # Base phase: half of the 3 base participants' test split; target phase: 10% of the target's val.
    base_stop, target_stop = 3 * n_test // 2, n_val // 10
    epochs = metrics["base_epochs_run"], metrics["target_epochs_run"]
    assert sizes == [base_stop] * epochs[0] + [target_stop] * epochs[1] + [target_stop, n_test, n_test]
    # int(0.9 * 64) = 57 target windows in every batch (round would give 58), and the
    # epoch ends when the shorter side runs out: 60 target windows make one batch.
    assert isinstance(loader, ComposedBatchDataLoader)
    assert (loader.target_per_batch, loader.epoch_rule) == (57, "shortest")
    assert target_windows_per_batch(loader) == [57]
    assert target_windows_per_batch(loader) == [57]
    # hyperparameters.json records the resolved values.
    assert hyper["preset"] == "original"
    assert (hyper["lr"], hyper["early_stopping_patience"], hyper["early_stopping_patience_target"]) == (3e-4, 40, 40)
    assert (hyper["base_val_pct"], hyper["target_val_pct"], hyper["target_count"], hyper["epoch_rule"]) == (
        0.5, 0.1, "floor", "shortest")
    assert (hyper["augmentation"], hyper["jitter_std"], hyper["magnitude_range"], hyper["aug_prob"]) == (
        "batch", 0.005, [0.98, 1.02], 0.3)


def test_explicit_flags_override_the_preset_in_a_run(monkeypatch, data, tmp_path):
    sizes, loader, hyper, metrics = run_spied(
        monkeypatch, data, tmp_path, "--preset", "original", "--target_val_pct", "1", "--target_count", "round",
        "--epoch_rule", "target_pass")
    epochs = metrics["base_epochs_run"], metrics["target_epochs_run"]
    assert sizes[epochs[0]:] == [SIZES[1]] * (epochs[1] + 1) + [SIZES[2]] * 2
    # round(57.6) = 58 per batch; one pass over 60 target windows takes two batches.
    assert (loader.target_per_batch, loader.epoch_rule, len(loader)) == (58, "target_pass", 2)
    assert target_windows_per_batch(loader) == [58, 58]
    assert (hyper["target_val_pct"], hyper["target_count"], hyper["lr"]) == (1.0, "round", 3e-4)


def test_batch_augmentation_changes_whole_batches():
    augment = make_augmenter(parse("--preset", "original", "--use_augmentation"),
                                        torch.Generator().manual_seed(0))
    assert isinstance(augment, BatchAugmenter)
    x = torch.randn(8, 6, 50, generator=torch.Generator().manual_seed(1))
    kinds = {"unchanged": 0, "jitter": 0, "magnitude": 0}
    draws = 600
    for _ in range(draws):
        out = augment(x)
        if torch.equal(out, x):
            kinds["unchanged"] += 1
            continue
        changed = (out != x).flatten(1).all(dim=1)
        assert changed.all()  # every window of the batch, never a part of it
        ratio = out / x
        per_window = ratio.flatten(1)
        if torch.allclose(per_window, per_window[:, :1].expand_as(per_window), atol=1e-5):
            # Magnitude scaling: one factor per window, within the original's range.
            assert ((per_window >= 0.98 - 1e-6) & (per_window <= 1.02 + 1e-6)).all()
            kinds["magnitude"] += 1
        else:
            assert 0.003 < (out - x).std() < 0.007  # jitter with std 0.005
            kinds["jitter"] += 1
    # Probability 0.3 that a batch is augmented, and the time warp (a third of the picks)
    # changes nothing, as in the original: about 10% jitter, 10% magnitude, 80% unchanged.
    assert 0.06 < kinds["jitter"] / draws < 0.14
    assert 0.06 < kinds["magnitude"] / draws < 0.14
    assert 0.72 < kinds["unchanged"] / draws < 0.88


def test_metric_keys_follow_the_originals_definitions(tmp_path):
    # A few flipped labels: validation F1 and loss disagree on the best base epoch.
    folder = tmp_path / "noisy"
    write_tiny_dataset(folder, participants=("a", "b", "c"), window=32, sizes=(16, 12, 8), seed=0)
    g = torch.Generator().manual_seed(5)
    for path in sorted(folder.glob("*.pt")):
        X, y = torch.load(path, weights_only=True)
        flipped = torch.randperm(len(y), generator=g)[:3]
        y[flipped] = 1 - y[flipped]
        torch.save((X, y), path)
    argv = ["--data_path", folder, "--experiments_dir", tmp_path / "exp", "--base_cache_dir", tmp_path / "cache",
            "--device", "cpu", "--batch_size", "4", "--max_epochs", "8", "--early_stopping_patience", "8",
            "--early_stopping_patience_target", "8", "--lr", "0.01", "--prefix", "m"]
    assert engine_cli.main([str(a) for a in argv], enhanced=True) == 0
    result = tmp_path / "exp" / "m" / "fold0_a"
    metrics = json.loads((result / "metrics.json").read_text())
    losses = json.loads((result / "losses.json").read_text())
    peaks_apart = []
    for phase in ("base", "target"):
        epochs = [e for e, v in zip(losses["epoch"], losses[f"{phase}_val_loss"]) if v is not None]
        loss = dict(zip(epochs, (losses[f"{phase}_val_loss"][e - 1] for e in epochs)))
        f1 = dict(zip(epochs, (losses[f"{phase}_val_f1"][e - 1] for e in epochs)))
        best_loss_epoch = min(epochs, key=lambda e: (loss[e], e))
        best_f1_epoch = min(epochs, key=lambda e: (-f1[e], e))
        assert metrics[f"best_{phase}_val_loss"] == loss[best_loss_epoch]
        assert metrics[f"best_{phase}_val_loss_epoch"] == metrics[f"best_{phase}_epoch"] == best_loss_epoch
        assert metrics[f"best_{phase}_val_f1"] == f1[best_f1_epoch] == max(f1.values())
        assert metrics[f"best_{phase}_val_f1_epoch"] == best_f1_epoch
        assert metrics[f"{phase}_val_f1_at_best_loss"] == f1[best_loss_epoch]
        peaks_apart.append(f1[best_f1_epoch] > f1[best_loss_epoch])
    assert peaks_apart[0]  # the base phase tells the two meanings apart
    # The base model (the cached best-loss checkpoint) scored on the target's val split.
    entry = tmp_path / "cache" / metrics["base_key"]
    model = build_model("test", 3)
    model.load_state_dict(torch.load(entry / "model.pt", weights_only=True))
    X, y = torch.load(folder / "a_val.pt", weights_only=True)
    assert (metrics["best_base_model_target_val_loss"], metrics["best_base_model_target_val_f1"]) == pytest.approx(
        engine_metrics.evaluate(model, X, y, torch.device("cpu")), abs=1e-6)


def test_target_data_pct_rounds_down_with_the_preset(data, tmp_path, capsys):
    X, y = torch.randn(30, 3, 4), torch.zeros(30)
    assert len(subsample(X, y, 0.25, 0, "round")[0]) == 8
    assert len(subsample(X, y, 0.25, 0, "floor")[0]) == 7  # int(7.5), as the original
    # In a run: 0.425 of the target's 60 train windows is 25.5.
    for extra, kept in ((["--preset", "original"], 25), (["--preset", "original", "--target_count", "round"], 26)):
        argv = ["--data_path", data, "--experiments_dir", tmp_path / "exp", "--device", "cpu", "--max_epochs", "1",
                "--mode", "target_only", "--target_data_pct", "0.425", "--overwrite", *extra]
        assert engine_cli.main([str(a) for a in argv]) == 0
        assert f"{kept} target train windows" in capsys.readouterr().out


def test_a_share_that_floors_to_no_target_window_is_a_one_line_error(data, tmp_path, capsys):
    # round(0.01 * 64) = 1 works; the original's int() gives 0, which no batch can hold.
    argv = ["--data_path", data, "--experiments_dir", tmp_path / "exp", "--device", "cpu",
            "--target_batch_pct", "0.01", "--preset", "original"]
    assert engine_cli.main([str(a) for a in argv], enhanced=True) == 2
    err = capsys.readouterr().err
    assert "gives 0 target windows per batch (--target_count floor)" in err and err.count("\n") == 1
    assert not (tmp_path / "exp").exists()
