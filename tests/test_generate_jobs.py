import json
import subprocess
import sys
from pathlib import Path

import pytest

import generate_jobs
from dataset import synthetic
from engine import cli as engine_cli
from engine.flags import job_argv
from runner import grid
from tiny_data import write_tiny_dataset

REPO = Path(__file__).resolve().parent.parent
OCT1 = str(REPO / "oct1_train.py")
EXAMPLES = REPO / "examples"


def run_cli(*argv, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "generate_jobs.py"), *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def expand(spec, script=OCT1):
    return grid.expand(grid.apply_sets(spec, []), grid.load_script_parser(script))


@pytest.fixture
def demo_cwd(tmp_path, monkeypatch):
    """A working folder whose data/demo holds six tiny participants."""
    write_tiny_dataset(tmp_path / "data" / "demo", participants=[f"p{i}" for i in range(1, 7)])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_original_grid_counts(tmp_path):
    out = tmp_path / "jobs.json"
    result = run_cli(str(EXAMPLES / "original_grid.json"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "jobs: 1008 jobs + 54 base-model jobs (duplicates dropped: 0)" in result.stdout
    assert "full_fine_tuning 504, target_only_fine_tuning 504" in result.stdout
    # 2 batch sizes x 7 folds x 6 base sizes = 84 fold-specific base models; folds whose
    # first-n base participants coincide share one, leaving 2 x (2+3+4+5+6+7) = 54.
    assert "unique base models: 54 for 1008 jobs" in result.stdout
    assert "(84 fold-specific" in result.stdout
    jobs = json.loads(out.read_text())
    assert len(jobs) == 1008
    assert len({job["job_id"] for job in jobs}) == 1008
    assert len({job["base_key"] for job in jobs}) == 54
    assert len({(job["base_key"], job["fold"]) for job in jobs}) == 84
    # No two jobs write the same result folder.
    assert len({(job["prefix"], job["fold"]) for job in jobs}) == 1008
    # The published grid's settings come from the preset, resolved by the training CLI's parser.
    assert all(job["preset"] == "original" and job["use_augmentation"] for job in jobs)
    args = grid.parse_job(grid.load_script_parser(OCT1), jobs[0], "job 0")
    assert (args.lr, args.early_stopping_patience, args.augmentation, args.target_count) == (3e-4, 40, "batch", "floor")


def test_batch_composition_and_data_efficiency_grids(demo_cwd):
    spec = json.loads((EXAMPLES / "batch_composition_grid.json").read_text())
    jobs, duplicates = expand(spec)
    assert (len(jobs), duplicates) == (5 * 6, 0)
    assert {job["target_batch_pct"] for job in jobs} == {0.1, 0.25, 0.5, 0.75, 0.9}
    # The base model does not depend on the batch composition: one per fold.
    assert len({job["base_key"] for job in jobs}) == 6

    spec = json.loads((EXAMPLES / "data_efficiency_grid.json").read_text())
    jobs, duplicates = expand(spec)
    assert (len(jobs), duplicates) == (3 * 5 * 6, 0)
    assert sum("base_key" in job for job in jobs) == 2 * 5 * 6
    assert len({job["base_key"] for job in jobs if "base_key" in job}) == 6


def test_default_grid_writes_jobs_config(demo_cwd):
    result = run_cli("--script", OCT1, cwd=demo_cwd)
    assert result.returncode == 0, result.stderr
    jobs = json.loads((demo_cwd / "jobs_config.json").read_text())
    assert len(jobs) == 12
    assert {job["mode"] for job in jobs} == {"full_fine_tuning", "target_only"}


def test_ids_stable_across_runs_and_key_order(demo_cwd):
    spec = {"grid": {"mode": ["full_fine_tuning"], "lr": [0.001, 0.01]}, "fixed": {"batch_size": 16},
            "folds": [0, 1], "prefix": "x"}
    reordered = {"prefix": "x", "folds": [0, 1], "fixed": {"batch_size": 16},
                 "grid": {"lr": [0.001, 0.01], "mode": ["full_fine_tuning"]}}
    first, _ = expand(spec)
    again, _ = expand(json.loads(json.dumps(spec)))
    other, _ = expand(reordered)
    ids = sorted(job["job_id"] for job in first)
    assert ids == sorted(job["job_id"] for job in again) == sorted(job["job_id"] for job in other)
    assert len(set(ids)) == 4
    # A default written out explicitly is the same job; a changed value is not.
    explicit, _ = expand(dict(spec, fixed={"batch_size": 16, "max_epochs": 500}))
    assert sorted(job["job_id"] for job in explicit) == ids
    changed, _ = expand(dict(spec, fixed={"batch_size": 16, "max_epochs": 499}))
    assert not set(job["job_id"] for job in changed) & set(ids)


def test_collapse_rules(demo_cwd):
    spec = {"grid": {"mode": ["target_only", "full_fine_tuning", "target_only_fine_tuning"],
                     "n_base_participants": [1, 5, 7], "target_batch_pct": [0.25, 0.5]},
            "fixed": {}, "folds": [0], "prefix": "c"}
    jobs, duplicates = expand(spec)
    by_mode = {}
    for job in jobs:
        by_mode.setdefault(job["mode"], []).append(job)
    # target_only: one job, no base settings.
    assert len(by_mode["target_only"]) == 1
    assert "n_base_participants" not in by_mode["target_only"][0]
    assert "target_batch_pct" not in by_mode["target_only"][0]
    assert "base_key" not in by_mode["target_only"][0]
    # 5 and 7 are both "all" for 5 other participants: 2 base sizes x 2 batch shares.
    assert len(by_mode["full_fine_tuning"]) == 4
    assert {job["n_base_participants"] for job in by_mode["full_fine_tuning"]} == {1, "all"}
    # target_only_fine_tuning ignores target_batch_pct: 2 base sizes.
    assert len(by_mode["target_only_fine_tuning"]) == 2
    assert (len(jobs), duplicates) == (7, 18 - 7)


def test_collapse_rules_of_the_original_behaviour_flags(demo_cwd):
    spec = {"grid": {"mode": ["target_only", "full_fine_tuning"], "base_val_pct": [0.5, 1.0],
                     "epoch_rule": ["target_pass", "shortest"], "target_count": ["round", "floor"],
                     "augmentation": ["window", "batch"]},
            "fixed": {"preset": "original"}, "folds": [0], "prefix": "c"}
    jobs, duplicates = expand(spec)
    # None of the four matters to target_only; for full_fine_tuning without
    # target_batch_pct, target shares or augmentation only base_val_pct does.
    assert sorted((job["mode"], job.get("base_val_pct")) for job in jobs) == [
        ("full_fine_tuning", 0.5), ("full_fine_tuning", 1.0), ("target_only", None)]
    assert not any({"epoch_rule", "target_count", "augmentation"} & set(job) for job in jobs)
    assert (len(jobs), duplicates) == (3, 32 - 3)
    # With a batch share, augmentation and a target subsample, each flag makes its own job.
    spec["fixed"].update(target_batch_pct=0.9, target_data_pct=0.5, use_augmentation=True)
    spec["grid"]["mode"] = ["full_fine_tuning"]
    jobs, duplicates = expand(spec)
    assert (len(jobs), duplicates) == (16, 0)


def test_base_key_matches_training_script(demo_cwd, capsys):
    spec = {"grid": {"n_base_participants": [2, "all"]}, "fixed": {"batch_size": 16, "use_augmentation": True},
            "folds": [1, 4], "prefix": "k"}
    jobs, _ = expand(spec)
    assert len(jobs) == 4
    for job in jobs:
        capsys.readouterr()
        assert engine_cli.main(job_argv(job) + ["--print_base_key"], enhanced=True) == 0
        assert capsys.readouterr().out.strip() == job["base_key"]


def test_train_py_jobs_carry_no_base_key(demo_cwd):
    jobs, _ = expand({"grid": {}, "fixed": {}, "folds": [0], "prefix": "t"}, script=str(REPO / "train.py"))
    assert len(jobs) == 1 and "base_key" not in jobs[0]


@pytest.mark.parametrize("spec, expected", [
    ({"grid": {"batch_sise": [1]}}, 'grid["batch_sise"]: unknown flag --batch_sise'),
    ({"grid": {"batch_size": [32, "x"]}}, 'grid["batch_size"][1] = "x"'),
    ({"grid": {"mode": ["fine_tune"]}}, 'grid["mode"][0] = "fine_tune": argument --mode: invalid choice'),
    ({"fixed": {"lr": "fast"}}, 'fixed["lr"] = "fast"'),
    ({"grid": {"batch_size": []}}, 'grid["batch_size"]: expected a non-empty list'),
    ({"grid": {"fold": [0]}}, 'grid["fold"]: --fold cannot be set'),
    ({"folds": [0, 6]}, "folds[1] = 6: neither a participant nor an index in range for 6 participants"),
    ({"folds": ["p2", "nobody"]}, 'folds[1] = "nobody": neither a participant nor an index in range'),
    ({"folds": "some"}, '"folds" must be "all" or a list'),
    ({"fixed": {"mode": "target_only_fine_tuning", "target_batch_pct": 0.5}, "grid": {"seed": [1]}},
     None),  # collapsed, not an error
    ({"fixed": {"magnitude_range": [1.2, 0.8]}}, "magnitude_range"),
])
def test_validation_errors(demo_cwd, spec, expected):
    spec = dict({"grid": {}, "fixed": {}, "folds": "all", "prefix": "v"}, **spec)
    if expected is None:
        jobs, _ = expand(spec)
        assert jobs and all("target_batch_pct" not in job for job in jobs)  # not vacuous on []
        return
    with pytest.raises(grid.GridError) as info:
        expand(spec)
    assert expected in str(info.value)


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"grid": {"lr": [0.1,]}}')
    result = run_cli(str(bad), "-o", str(tmp_path / "out.json"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not valid JSON (line 1" in result.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("content, argv, expected", [
    ('{"grid": {}, "extra": 1}', [], "unknown key(s) ['extra']"),
    ("[1, 2]", [], "expected an object"),
    ('{"grid": {}}', ["--set", "nope"], "expected flag=value"),
    ('{"grid": {}, "fixed": {"data_path": "/nonexistent/data"}}', [], 'give "participants"'),
    ('{"grid": {}, "fixed": [1]}', [], '"fixed" must be an object of flag: values, got [1]'),
    ('{"grid": [["lr", 1]]}', ["--set", "seed=1,2"], '"grid" must be an object of flag: values'),
])
def test_cli_error_messages(tmp_path, capsys, content, argv, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "out.json"
    assert generate_jobs.main([str(bad), "--script", OCT1, "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("generate_jobs.py: error: ") and expected in err and err.count("\n") == 1
    assert not out.exists()


def test_set_overrides_and_print(tmp_path):
    result = run_cli(str(EXAMPLES / "original_grid.json"), "--set", "batch_size=16",
                     "--set", "n_base_participants=all", "--set", "target_data_pct=0.5", "--set", "folds=0,3",
                     "--print", "-o", str(tmp_path / "jobs.json"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 * 2  # two modes x two folds
    assert all(line.startswith("python oct1_train.py ") and "--batch_size 16" in line for line in lines)
    assert "jobs: 4" in result.stderr
    assert not (tmp_path / "jobs.json").exists()


def test_print_puts_only_command_lines_on_stdout_even_when_it_makes_the_demo_data(tmp_path, monkeypatch,
                                                                                   capsys):
    import functools
    monkeypatch.chdir(tmp_path)  # no data/demo here: the default grid creates it first
    # A small demo dataset keeps the test fast; what matters is the line announcing it.
    monkeypatch.setattr(synthetic, "write_synthetic_dataset", functools.partial(
        synthetic.write_synthetic_dataset, n_participants=3, window_size=50, n_train=4, n_val=2, n_test=2))
    assert generate_jobs.main(["--print", "--script", OCT1]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "data" / "demo" / "p01_train.pt").is_file()
    lines = out.splitlines()
    assert len(lines) == 6 and all(line.startswith(f"python {OCT1} --") for line in lines), out
    assert "creating the synthetic demo dataset" in err


def test_generator_and_runner_count_jobs_alike(demo_cwd, capsys):
    import run_distributed_training as rdt
    assert generate_jobs.main(["--script", OCT1, "-o", "jobs.json"]) == 0
    out = capsys.readouterr().out
    # The demo grid: 6 folds x (full_fine_tuning, target_only); one base model per full_fine_tuning fold.
    assert "jobs: 12 jobs + 6 base-model jobs (duplicates dropped: 0)" in out
    (demo_cwd / "cluster.json").write_text(json.dumps(
        {"servers": [{"host": "here", "local": True, "gpus": [0]}], "script_path": OCT1}))
    assert rdt.main(["--cluster-config", "cluster.json", "--jobs-config", "jobs.json", "--dry-run"]) == 0
    assert "# 12 jobs + 6 base-model jobs over 1 slot: here:0" in capsys.readouterr().out


def test_a_grid_prefix_that_leaves_experiments_is_one_line(tmp_path):
    for prefix in ("/abs", "../up"):
        result = run_cli("--set", f"prefix={prefix}", "--print", "--script", OCT1, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert "results must stay inside --experiments_dir" in result.stderr
