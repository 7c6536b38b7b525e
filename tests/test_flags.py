"""The flag registry (flags.py): every parser flag has a role, and what derives from the roles."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import generate_jobs
import make_dataset
import summarize_results as sr
from engine import base_cache, flags
from engine import cli as engine_cli
from engine.flags import job_argv
from report import runs as report_runs
from runner import grid
from tiny_data import write_tiny_dataset

REPO = Path(__file__).resolve().parent.parent
KEY_FLAGS = ["--participants", "a", "b", "c", "d"]


def option_dests(parser):
    return {action.dest for action in parser._actions if action.option_strings and action.dest != "help"}


@pytest.mark.parametrize("enhanced", [False, True], ids=["train.py", "oct1_train.py"])
def test_every_parser_flag_has_a_role_help_and_default(enhanced):
    parser = engine_cli.build_parser(enhanced)
    dests = option_dests(parser)
    assert dests == {flag.name for flag in flags.flags_of(enhanced)}
    for name in dests:
        assert flags.BY_NAME[name].role in flags.ROLES, name
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert "(default " in action.help, action.dest


def with_flag(monkeypatch, flag):
    monkeypatch.setattr(flags, "FLAGS", flags.FLAGS + (flag,))
    monkeypatch.setattr(flags, "BY_NAME", dict(flags.BY_NAME, **{flag.name: flag}))


def key_of(argv):
    return base_cache.key_for_args(engine_cli.build_parser(True).parse_args(argv))


def test_registering_a_base_flag_changes_the_base_key_with_no_other_edit(monkeypatch):
    with_flag(monkeypatch, flags.Flag("throwaway_dropout", "base", "a new base-phase setting", default=0.0,
                                      options={"type": float}))
    assert key_of(KEY_FLAGS + ["--throwaway_dropout", "0.3"]) != key_of(KEY_FLAGS)
    assert "throwaway_dropout" in option_dests(engine_cli.build_parser(False))


def test_registering_a_target_flag_keeps_the_base_key(monkeypatch):
    with_flag(monkeypatch, flags.Flag("throwaway_target_lr", "target", "a new target-phase setting", default=0.0,
                                      options={"type": float}))
    assert key_of(KEY_FLAGS + ["--throwaway_target_lr", "0.3"]) == key_of(KEY_FLAGS)
    assert "throwaway_target_lr" in flags.not_in_base_job()


def test_base_keys_of_existing_settings_are_unchanged():
    # Computed with the code before the registry: a changed key would orphan every cached base model.
    assert key_of(KEY_FLAGS) == "02bde6c7b5f52c4d9ad8"
    assert key_of(KEY_FLAGS + ["--cpu_kernels", "fast"]) == "02bde6c7b5f52c4d9ad8"  # the default stays out of it
    assert key_of(KEY_FLAGS + ["--preset", "original"]) == "8407fb23a26baf8cd91e"
    assert key_of(KEY_FLAGS + ["--use_augmentation", "--augmentation", "batch", "--jitter_std", "0.1"]) \
        == "cb4a35df496b4133a137"


def test_a_base_job_without_the_left_out_flags_has_the_same_key():
    job = {"participants": ["a", "b", "c", "d"], "mode": "full_fine_tuning",
           "target_data_pct": 0.5, "early_stopping_patience_target": 3, "target_val_pct": 0.5,
           "target_count": "floor", "target_batch_pct": 0.25, "epoch_rule": "shortest", "prefix": "p",
           "experiments_dir": "e", "overwrite": True, "batch_size": 16, "lr": 0.01, "seed": 3}
    base_job = {k: v for k, v in job.items() if k not in flags.not_in_base_job()}
    base_job["mode"] = "base_only"
    assert set(job) - set(base_job) == {"target_data_pct", "early_stopping_patience_target", "target_val_pct",
                                        "target_count", "target_batch_pct", "epoch_rule", "prefix",
                                        "experiments_dir", "overwrite"}
    assert key_of(job_argv(base_job)) == key_of(job_argv(job))


def test_report_columns_follow_the_roles():
    assert {"device", "progress_every", "prefix", "base_cache_dir", "fold"} <= report_runs.NOT_SETTINGS
    assert not {"lr", "seed", "data_path", "participants", "target_batch_pct"} & report_runs.NOT_SETTINGS
    assert report_runs.BASE_PHASE_SETTINGS == {"n_base_participants", "early_stopping_patience",
                                                     "base_val_pct", "target_batch_pct", "epoch_rule",
                                                     "finetune_layers"}


def test_collapse_drops_augmentation_parameters_without_augmentation():
    kept = grid.collapse({"use_augmentation": True, "jitter_std": 0.1, "aug_prob": 0.2},
                                  "full_fine_tuning", 5)
    assert kept == {"use_augmentation": True, "jitter_std": 0.1, "aug_prob": 0.2}
    assert grid.collapse({"jitter_std": 0.1, "aug_prob": 0.2, "lr": 0.1}, "full_fine_tuning", 5) \
        == {"lr": 0.1}
    # The count rule matters for a target share below 1, and for batch composition only in its mode.
    assert grid.collapse({"target_count": "floor", "target_data_pct": 0.5}, "target_only", 5) \
        == {"target_count": "floor", "target_data_pct": 0.5}
    assert grid.collapse({"target_count": "floor", "target_batch_pct": 0.5}, "target_only", 5) == {}


def test_target_windows_per_batch_is_the_one_share_count():
    def windows(**settings):
        return flags.target_windows_per_batch(argparse.Namespace(**settings))
    assert windows(batch_size=10, target_batch_pct=0.35, target_count="round") == 4
    assert windows(batch_size=10, target_batch_pct=0.35, target_count="floor") == 3
    assert windows(batch_size=64) is None  # train.py has no --target_batch_pct


# ---------------------------------------------------------------- CLI polish

def cli(script, *argv):
    return subprocess.run([sys.executable, str(REPO / script), *argv], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.mark.parametrize("argv, message", [
    (["--target_batch_pct", "25"], "expected a share in (0, 1], got '25' (write 25% as 0.25)"),
    (["--batch_size", "x"], "argument --batch_size: expected a whole number >= 1, got 'x'"),
    (["--n_base_participants", "0"], "expected 'all' or a whole number >= 1, got '0'"),
    (["--max_epoch", "1"], "unrecognized arguments: --max_epoch 1"),
])
def test_training_flags_fail_with_a_readable_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        engine_cli.build_parser(True).parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_train_py_points_to_oct1_train_py_for_batch_composition():
    result = cli("train.py", "--target_batch_pct", "0.25")
    assert result.returncode == 2
    assert "--target_batch_pct: use oct1_train.py" in result.stderr
    assert "oct1_train.py" in cli("train.py", "--help").stdout
    assert "Adds to train.py" in cli("oct1_train.py", "--help").stdout


@pytest.mark.parametrize("parser", [
    generate_jobs.build_parser(), sr.build_parser(), make_dataset.build_parser(),
], ids=["generate_jobs", "summarize_results", "make_dataset"])
def test_other_clis_refuse_abbreviations_and_show_defaults(parser):
    parsers = [parser] + [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                          for sub in action.choices.values()]
    for each in parsers:
        assert each.allow_abbrev is False, each.prog
        for action in each._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and "default" in action.help, f"{each.prog} --{action.dest}"


# ---------------------------------------------------------------- process-wide state

def test_main_restores_sigterm_and_logging_and_says_when_it_trained_a_base(tmp_path, capsys):
    import logging
    import signal

    from tiny_data import write_tiny_dataset
    write_tiny_dataset(tmp_path / "data")
    logger = logging.getLogger("experiment")
    own = logging.NullHandler()
    logger.addHandler(own)

    def on_sigterm(*_):
        pass
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        before = (list(logger.handlers), logger.level, logger.propagate)
        argv = ["--data_path", str(tmp_path / "data"), "--experiments_dir", str(tmp_path / "exp"),
                "--base_cache_dir", str(tmp_path / "cache"), "--max_epochs", "1", "--batch_size", "8",
                "--device", "cpu", "--progress_every", "0"]
        assert engine_cli.main(argv, enhanced=True) == 0
        assert signal.getsignal(signal.SIGTERM) is on_sigterm
        assert (list(logger.handlers), logger.level, logger.propagate) == before
        key = base_cache.key_for_args(engine_cli.build_parser(True).parse_args(argv))
        assert f"BASE_TRAINED {key}\n" in capsys.readouterr().out
        # The second fold of another prefix reuses the stored base model: no line.
        assert engine_cli.main(argv + ["--prefix", "again"], enhanced=True) == 0
        assert "BASE_TRAINED" not in capsys.readouterr().out
    finally:
        signal.signal(signal.SIGTERM, previous)
        logger.removeHandler(own)


@pytest.mark.parametrize("prefix", ["../../x", "/tmp/x", "a/../../b"])
def test_a_prefix_that_leaves_the_experiments_folder_is_refused_in_one_line(prefix, tmp_path, capsys):
    write_tiny_dataset(tmp_path / "data")
    status = engine_cli.main(["--data_path", str(tmp_path / "data"), "--prefix", prefix, "--max_epochs", "1",
                              "--experiments_dir", str(tmp_path / "exp")], enhanced=True)
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "results must stay inside --experiments_dir" in err
    assert not (tmp_path / "exp").exists() and not list(tmp_path.glob("x*"))
