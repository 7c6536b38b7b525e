"""What one fold tells a researcher: progress without a terminal, the log while
it runs, positive-class scores, and a flag when early stopping never fired."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import cli as engine_cli
from engine.models import build_model
from tiny_data import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_tiny_dataset(folder, participants=("a", "b", "c"), window=32, sizes=(16, 8, 12))
    return folder


def flags(data, exp, *extra):
    return [str(a) for a in ["--data_path", data, "--experiments_dir", exp, "--device", "cpu",
                             "--batch_size", "8", *extra]]


def wait_for(read, proc, deadline_s=120):
    """Poll read() until it returns something true while proc runs; a bound, not a timing check."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        ended = proc.poll() is not None
        value = read()
        if value:
            return value
        assert not ended, f"the run ended (exit {proc.returncode}) before it came"
        time.sleep(0.01)
    raise AssertionError("nothing came within the deadline")


@pytest.mark.slow
def test_without_a_terminal_the_first_epoch_shows_and_the_log_is_readable_while_running(data, tmp_path):
    out_path = tmp_path / "run.txt"
    with open(out_path, "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"),
             *flags(data, tmp_path / "exp", "--max_epochs", "20", "--early_stopping_patience", "20",
                    "--early_stopping_patience_target", "20", "--progress_every", "100000")],
            stdout=out, stderr=err, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        # The log's path comes first; stdout (a file) gets the first epoch line as soon as it ends.
        log_path = Path(wait_for(lambda: re.match(r"log: (\S+)", out_path.read_text()), proc)[1])
        wait_for(lambda: "base epoch 1: train loss" in out_path.read_text(), proc)
        proc.send_signal(signal.SIGSTOP)  # paused mid-run, so what is read below is read while it runs
        try:
            assert proc.poll() is None, "the run ended before it could be paused"
            assert re.search(r"base epoch 1: train loss", log_path.read_text())
        finally:
            proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=600) == 0
    finally:
        proc.kill()
        proc.wait()
    text = out_path.read_text()
    folder = Path(re.search(r"RESULT_DIR (\S+)", text)[1])
    metrics = json.loads((tmp_path / folder / "metrics.json").read_text())
    first_target = metrics["transition_epoch"] + 1
    # At most one line per --progress_every seconds: here only each phase's first epoch.
    assert re.findall(r"^(\w+ epoch \d+):", text, re.M) == ["base epoch 1", f"target epoch {first_target}"]
    # The full log, every epoch, is in the result folder.
    log = (tmp_path / folder / "train.log").read_text()
    assert len(re.findall(r"epoch \d+: train loss", log)) == metrics["base_epochs_run"] + metrics["target_epochs_run"]


def test_positive_class_scores_equal_a_hand_computation(data, tmp_path):
    argv = flags(data, tmp_path, "--max_epochs", "3", "--mode", "full_fine_tuning", "--prefix", "ft")
    assert engine_cli.main(argv) == 0
    folder = tmp_path / "ft" / "fold0_a"
    metrics = json.loads((folder / "metrics.json").read_text())
    model = build_model("test", 3)
    model.load_state_dict(torch.load(folder / "best_target_model.pt", weights_only=True))
    model.eval()
    X, y = torch.load(data / "a_test.pt", weights_only=True)
    with torch.no_grad():
        pred = (torch.sigmoid(model(X)).view(-1) > 0.5).tolist()
    truth = (y.view(-1) > 0.5).tolist()
    tp = sum(p and t for p, t in zip(pred, truth))
    fp = sum(p and not t for p, t in zip(pred, truth))
    fn = sum(t and not p for p, t in zip(pred, truth))
    tn = len(truth) - tp - fp - fn
    precision, recall = (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)
    f1_pos = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    f1_neg = 2 * tn / (2 * tn + fn + fp) if tn + fn + fp else 0.0
    key = "best_target_model_target_test"
    assert metrics[f"{key}_f1_pos"] == pytest.approx(f1_pos)
    assert metrics[f"{key}_precision"] == pytest.approx(precision)
    assert metrics[f"{key}_recall"] == pytest.approx(recall)
    assert metrics[f"{key}_f1"] == pytest.approx((f1_pos + f1_neg) / 2)  # the macro key stays
    for name in ("f1_pos", "precision", "recall"):
        assert 0 <= metrics[f"best_base_model_target_test_{name}"] <= 1

    assert engine_cli.main(flags(data, tmp_path, "--max_epochs", "2", "--mode", "target_only",
                                 "--prefix", "to")) == 0
    metrics = json.loads((tmp_path / "to" / "fold0_a" / "metrics.json").read_text())
    assert metrics["best_base_model_target_test_f1_pos"] is None
    assert metrics["best_target_model_target_test_recall"] is not None


def test_a_phase_whose_best_epoch_is_its_last_is_flagged_in_the_log(data, tmp_path):
    # One epoch per phase: the best is the last, whatever the data.
    assert engine_cli.main(flags(data, tmp_path, "--max_epochs", "1", "--prefix", "one")) == 0
    log = (tmp_path / "one" / "fold0_a" / "train.log").read_text()
    for phase in ("base", "target"):
        assert re.search(rf"{phase}: the best epoch is the last one, .*may be under-trained: raise --max_epochs", log)
    # Patience 1 over up to 40 epochs: flagged exactly when the best target epoch is the last.
    assert engine_cli.main(flags(data, tmp_path, "--max_epochs", "40", "--early_stopping_patience", "1",
                                 "--early_stopping_patience_target", "1", "--prefix", "early")) == 0
    folder = tmp_path / "early" / "fold0_a"
    metrics = json.loads((folder / "metrics.json").read_text())
    last = metrics["transition_epoch"] + metrics["target_epochs_run"]
    flagged = "target: the best epoch is the last one" in (folder / "train.log").read_text()
    assert flagged == (metrics["best_target_epoch"] == last)
