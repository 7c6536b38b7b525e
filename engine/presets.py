"""What --preset means: the flags whose default a preset decides, this project's values for them, and
each preset's. No torch: the planners read it too (engine.flags re-exports it)."""

ARCHITECTURE_FLAGS = ("base_channels", "num_blocks", "use_dilation", "use_residual", "dropout")  # shape `test`

# Flags whose default depends on --preset: without one they keep this project's
# values; `--preset original` gives every behaviour of the original's oct1_train.py, `--preset
# manuscript` the protocol of its authors' final grid (their configurable model with 64 channels,
# dilation and dropout, early stopping on F1 with no epoch cap). A preset leaves out what it keeps.
PROJECT_DEFAULTS = {
    "lr": 1e-3, "early_stopping_patience": 10, "early_stopping_patience_target": 10,
    "base_val_pct": 1.0, "target_val_pct": 1.0, "target_count": "round", "epoch_rule": "target_pass",
    "augmentation": "window", "jitter_std": 0.03, "magnitude_range": [0.9, 1.1], "aug_prob": 0.5,
    "batch_size": 64, "max_epochs": 500, "use_augmentation": False, "early_stopping_metric": "loss",
    "base_channels": 8, "use_dilation": False, "dropout": 0.0,
}
_ORIGINAL_AUGMENTATION = {"augmentation": "batch", "jitter_std": 0.005, "magnitude_range": [0.98, 1.02],
                          "aug_prob": 0.3}
PRESETS = {
    "original": {
        "lr": 3e-4, "early_stopping_patience": 40, "early_stopping_patience_target": 40,
        "base_val_pct": 0.5, "target_val_pct": 0.1, "target_count": "floor", "epoch_rule": "shortest",
        **_ORIGINAL_AUGMENTATION},
    "manuscript": {
        "lr": 3e-4, "early_stopping_patience": 50, "early_stopping_patience_target": 200,
        "target_count": "floor", "epoch_rule": "shortest", **_ORIGINAL_AUGMENTATION,
        "batch_size": 32, "max_epochs": "none", "use_augmentation": True, "early_stopping_metric": "f1",
        "base_channels": 64, "use_dilation": True, "dropout": 0.5},
}


def resolve_preset(args):
    """Fill every preset-dependent flag the command line left unset (explicit flags win). A preset's
    architecture (the manuscript's 64 dilated channels) shapes `test` only: with another --model the
    rest of the protocol applies to that model."""
    chosen = preset_values(args.preset, getattr(args, "model", "test"))
    for name, default in PROJECT_DEFAULTS.items():
        if hasattr(args, name) and getattr(args, name) is None:
            value = chosen.get(name, default)
            setattr(args, name, list(value) if isinstance(value, list) else value)
    return args


def preset_values(preset, model):
    """The flag values a --preset sets for this --model."""
    chosen = PRESETS.get(preset, {})
    return chosen if model == "test" else {k: v for k, v in chosen.items() if k not in ARCHITECTURE_FLAGS}
