import os
import stat
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import plotting  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CURVE_KEYS = [f"{phase}_{split}_{metric}" for phase in ("base", "target")
              for split in ("train", "val") for metric in ("loss", "f1")]


def make_losses(n_base=3, n_target=2):
    """A losses.json dict as the engine writes it: base curves null during the
    target phase and the other way round."""
    n = n_base + n_target
    losses = {"epoch": list(range(1, n + 1)),
              "transition_epoch": n_base if n_base and n_target else None,
              "best_base_epoch": 2 if n_base >= 2 else (1 if n_base else None),
              "best_target_epoch": n if n_target else None}
    for key in CURVE_KEYS:
        phase_epochs = range(n_base) if key.startswith("base") else range(n_base, n)
        values = [None] * n
        for i in phase_epochs:
            values[i] = 1.0 / (i + 1) if key.endswith("loss") else 0.5 + 0.05 * i
        losses[key] = values
    return losses


def with_changes(losses, **changes):
    out = dict(losses)
    out.update(changes)
    return out


def without(losses, *keys):
    return {k: v for k, v in losses.items() if k not in keys}


FULL = make_losses()
CASES = {
    "two_phases": FULL,
    "curve_entirely_none": with_changes(FULL, base_train_f1=None, target_val_loss=[None] * 5),
    "single_none_epochs": with_changes(FULL, base_val_loss=[0.9, None, 0.7, None, None],
                                       target_train_f1=[None, None, None, 0.6, None]),
    "missing_curve_keys": without(FULL, "base_val_loss", "target_train_f1", "target_val_f1"),
    "missing_all_but_one_curve": {"base_train_loss": [1.0, 0.5]},
    "missing_epoch_key": without(FULL, "epoch"),
    "best_epochs_out_of_range": with_changes(FULL, best_base_epoch=99, best_target_epoch=-1),
    "best_epochs_garbage": with_changes(FULL, best_base_epoch="two", best_target_epoch=[4]),
    "best_epochs_missing": without(FULL, "best_base_epoch", "best_target_epoch", "transition_epoch"),
    "best_epoch_on_none_value": with_changes(FULL, best_base_epoch=4),
    "target_only": make_losses(n_base=0, n_target=4),
    "base_only": make_losses(n_base=4, n_target=0),
    "single_epoch": make_losses(n_base=1, n_target=0),
    "zero_epochs": make_losses(n_base=0, n_target=0),
    "empty_dict": {},
    "all_curves_none": {"epoch": [1, 2, 3], **{key: None for key in CURVE_KEYS}},
    "non_positive_losses": with_changes(FULL, base_train_loss=[0.0, -1.0, 0.5, None, None],
                                        target_val_loss=[None, None, None, 0.0, -0.2]),
    "nan_and_inf_values": with_changes(FULL, base_val_f1=[float("nan"), float("inf"), 0.5, None, None]),
    "short_curve": with_changes(FULL, target_val_loss=[0.4]),
}


def assert_valid_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    with Image.open(path) as img:
        img.verify()
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    # A blank canvas has one colour everywhere; a plot or the "no data" text does not.
    assert pixels[..., :3].std() > 0.01, f"{path} looks blank"


@pytest.mark.parametrize("name", list(CASES))
def test_writes_both_valid_pngs(tmp_path, name):
    paths = plotting.plot_training_curves(CASES[name], tmp_path)
    assert [p.name for p in paths] == ["loss_curves.png", "f1_curves.png"]
    for path in paths:
        assert path.parent == tmp_path
        assert_valid_png(path)
    # The atomic write leaves nothing but the two PNGs behind.
    assert sorted(os.listdir(tmp_path)) == ["f1_curves.png", "loss_curves.png"]


def test_creates_out_dir_and_overwrites(tmp_path):
    out_dir = tmp_path / "a" / "b"
    first = plotting.plot_training_curves({}, out_dir)
    no_data_size = first[0].stat().st_size
    second = plotting.plot_training_curves(FULL, out_dir)
    assert first == second
    assert second[0].stat().st_size != no_data_size
    assert_valid_png(second[0])


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def crash(self, f, **options):
        f.write(PNG_SIGNATURE)  # a half-written file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(FigureCanvasAgg, "print_png", crash)  # what Figure.savefig draws a PNG with
    with pytest.raises(KeyboardInterrupt):
        plotting.plot_training_curves(FULL, tmp_path)
    assert os.listdir(tmp_path) == []


def test_to_nan_array_puts_nan_exactly_where_none_was():
    values = [0.5, None, 2, None, 0.0, -1.0]
    out = plotting.to_nan_array(values, len(values))
    assert out.dtype == np.float64
    assert np.isnan(out).tolist() == [v is None for v in values]
    assert out[[0, 2, 4, 5]].tolist() == [0.5, 2.0, 0.0, -1.0]


def test_to_nan_array_pads_truncates_and_rejects_non_numbers():
    assert np.isnan(plotting.to_nan_array(None, 3)).all()
    assert plotting.to_nan_array([], 0).shape == (0,)
    padded = plotting.to_nan_array([1.0], 3)
    assert padded[0] == 1.0 and np.isnan(padded[1:]).all()
    assert plotting.to_nan_array([1, 2, 3, 4], 2).tolist() == [1.0, 2.0]
    odd = plotting.to_nan_array(["x", float("inf"), [1], "2.5"], 4)
    assert np.isnan(odd[:3]).all() and odd[3] == 2.5


def test_epoch_axis():
    assert plotting.epoch_axis({"epoch": [3, 4, 5]}).tolist() == [3.0, 4.0, 5.0]
    assert plotting.epoch_axis({"base_val_loss": [1, 2], "target_val_loss": [1, 2, 3, 4]}).tolist() == [1, 2, 3, 4]
    assert plotting.epoch_axis({"epoch": [1, None, 3]}).tolist() == [1.0, 2.0, 3.0]
    assert plotting.epoch_axis({}).shape == (0,)


def test_loss_curve_masks_non_positive_values_but_f1_keeps_zero():
    losses = {"base_val_loss": [0.0, -2.0, 0.3], "base_val_f1": [0.0, 0.5, None]}
    loss = plotting.curve(losses, "base", "val", "loss", 3)
    f1 = plotting.curve(losses, "base", "val", "f1", 3)
    assert np.isnan(loss).tolist() == [True, True, False]
    assert f1[:2].tolist() == [0.0, 0.5] and np.isnan(f1[2])


def test_best_points_at_best_epochs():
    losses = make_losses(n_base=3, n_target=2)  # best base 2, best target 5
    assert plotting.best_points(losses, "loss") == [
        ("base", 2.0, losses["base_val_loss"][1]), ("target", 5.0, losses["target_val_loss"][4])]
    assert plotting.best_points(losses, "f1") == [
        ("base", 2.0, losses["base_val_f1"][1]), ("target", 5.0, losses["target_val_f1"][4])]


def test_best_points_match_epoch_values_not_positions():
    losses = {"epoch": [10, 11, 12], "best_target_epoch": 11, "target_val_f1": [0.1, 0.2, 0.3]}
    assert plotting.best_points(losses, "f1") == [("target", 11.0, 0.2)]


@pytest.mark.parametrize("changes", [
    {"best_base_epoch": None, "best_target_epoch": None},
    {"best_base_epoch": 0, "best_target_epoch": 6},
    {"best_base_epoch": "2", "best_target_epoch": 2.5},
    {"best_base_epoch": 4, "best_target_epoch": 1},  # epochs where that phase has no value
])
def test_best_points_skip_unusable_best_epochs(changes):
    losses = with_changes(FULL, **changes)
    expected = [("base", 2.0, FULL["base_val_loss"][1])] if changes["best_base_epoch"] == "2" else []
    assert plotting.best_points(losses, "loss") == expected


def test_best_points_skip_value_masked_on_log_axis():
    losses = with_changes(FULL, base_val_loss=[1.0, 0.0, 0.5, None, None])
    assert [p[0] for p in plotting.best_points(losses, "loss")] == ["target"]
    assert [p[0] for p in plotting.best_points(losses, "f1")] == ["base", "target"]
    assert plotting.best_points({}, "loss") == []


def test_transition_x():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert plotting.transition_x({"transition_epoch": 3}, x) == 3.5
    assert plotting.transition_x({"transition_epoch": None}, x) is None
    assert plotting.transition_x({}, x) is None
    # base_only: the last base epoch is the last epoch, so there is no second phase to mark.
    assert plotting.transition_x({"transition_epoch": 5}, x) is None
    assert plotting.transition_x({"transition_epoch": 3}, np.array([])) is None


def test_draw_breaks_lines_at_none_and_marks_transition():
    losses = with_changes(FULL, base_val_loss=[0.9, None, 0.7, None, None])
    ax = Figure().add_subplot()
    assert plotting.draw(ax, losses, "loss")
    lines = {line.get_label(): line for line in ax.get_lines()}
    base_val = lines["base participants' test"].get_ydata()
    assert np.isnan(base_val).tolist() == [False, True, False, True, True]
    assert lines["phase transition"].get_xdata()[0] == 3.5
    assert ax.get_yscale() == "log"
    # best_base_epoch 2 falls on the None value, so only the target best is marked.
    assert "best base" not in lines and "best target" in lines


def test_draw_reports_no_data():
    ax = Figure().add_subplot()
    assert not plotting.draw(ax, CASES["all_curves_none"], "f1")
    assert ax.get_lines() == []


def test_pngs_get_the_same_permissions_as_every_other_output(tmp_path):
    old = os.umask(0o022)  # a typical shared server: others may read
    try:
        pngs = plotting.plot_training_curves(FULL, tmp_path)
        (tmp_path / "metrics.json").write_text("{}")  # as experiment.py writes its JSON files
    finally:
        os.umask(old)
    json_mode = stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode)
    assert json_mode == 0o644
    assert [stat.S_IMODE(p.stat().st_mode) for p in pngs] == [json_mode, json_mode]
    assert sorted(os.listdir(tmp_path)) == ["f1_curves.png", "loss_curves.png", "metrics.json"]
