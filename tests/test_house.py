"""The house in two wings (issue 22) changed where the code lives, not what it does: a fold and a
small grid run by the commit before the move (taken with `git archive`) and by this checkout give
the same results, bit for bit. And the layout keeps its shape: thin CLIs on top, no import circle.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_json
from tiny_data import write_tiny_dataset

REPO = Path(__file__).resolve().parent.parent
BEFORE_THE_MOVE = "302e57f585f7d9c0bf31e3c5bdd7ce2d951131a9"  # main just before the engine/ and runner/ packages
TIMING_KEYS = {"total_time_s", "train_windows_per_s", "peak_device_memory_mb"}  # (a key added since)
CLIS = {"train.py", "oct1_train.py", "pack_train.py", "generate_jobs.py", "run_distributed_training.py",
        "summarize_results.py", "make_dataset.py"}
PACKAGES = ("engine", "runner", "report", "dataset")
FIXED = {"max_epochs": 3, "early_stopping_patience": 2, "early_stopping_patience_target": 2, "batch_size": 8,
         "device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def before(tmp_path_factory):
    """The checkout of the commit before the move."""
    folder = tmp_path_factory.mktemp("before")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_THE_MOVE], capture_output=True)
    assert archive.returncode == 0, f"git archive {BEFORE_THE_MOVE}: {archive.stderr.decode()} (a full clone has it)"
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def run(code, script, *argv, cwd):
    result = subprocess.run([sys.executable, str(Path(code) / script), *map(str, argv)], cwd=cwd,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=""))
    assert result.returncode == 0, f"{code}/{script}: {result.stderr[-2000:]}"
    return result.stdout


def results(folder):
    """{relative path: content} of every result folder and base-model entry under folder: the JSON
    files without their timing keys, and each model's tensors."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.name in ("metrics.json", "losses.json", "config.json", "fingerprint.json"):
            content = json.loads(path.read_text())
            for key in TIMING_KEYS | {"windows_per_s"}:
                content.pop(key, None)
            found[rel] = content
        elif path.suffix == ".pt":
            found[rel] = torch.load(path, weights_only=True)
    return found


def base_keys(found):
    return {rel.split("/")[1] for rel in found if rel.startswith("base_models/")}


def keyed_as_before(new, old):
    """new with its base key read as old's: since issue 35 `--cpu_kernels reference` enters the key (and
    the entry's config.json), so that such a run never reuses a base trained with the fast kernels."""
    (new_key,), (old_key,) = base_keys(new), base_keys(old)
    renamed = {}
    for rel, value in new.items():
        if rel.endswith("config.json"):
            value = {k: v for k, v in value.items() if k != "cpu_kernels"}
        if rel.endswith("metrics.json") and value.get("base_key") == new_key:
            value = dict(value, base_key=old_key)
        renamed[rel.replace(new_key, old_key)] = value
    return renamed


def assert_same(old, new):
    assert old.keys() == new.keys()
    for rel, value in old.items():
        if isinstance(value, dict) and value and all(torch.is_tensor(v) for v in value.values()):
            assert value.keys() == new[rel].keys() and all(torch.equal(value[k], new[rel][k]) for k in value), rel
        else:
            assert new[rel] == value, rel


def test_a_fold_gives_what_it_gave_before_the_move_bit_for_bit(before, tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, sizes=(30, 10, 10))
    argv = ["--data_path", data, "--fold", "1", "--mode", "full_fine_tuning", "--target_batch_pct", "0.25",
            "--use_augmentation", "--prefix", "f", *[x for k, v in FIXED.items() for x in (f"--{k}", v)]]
    # This checkout with the engine's historic kernels, which the commit before had (the fast ones
    # compute the same model with other rounding: tests/test_fast_kernels.py).
    for code, out, extra in ((before, tmp_path / "old", []), (REPO, tmp_path / "new", ["--cpu_kernels", "reference"])):
        out.mkdir()
        run(code, "oct1_train.py", *argv, *extra, cwd=out)
    old, new = results(tmp_path / "old" / "experiments"), results(tmp_path / "new" / "experiments")
    assert any(rel.endswith("best_target_model.pt") for rel in old) and any("base_models" in rel for rel in old)
    assert_same(old, keyed_as_before(new, old))


@pytest.mark.slow
def test_a_small_grid_gives_what_it_gave_before_the_move_bit_for_bit(before, tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data)
    outcomes = []
    for code, out, extra in ((before, tmp_path / "old", {}), (REPO, tmp_path / "new", {"cpu_kernels": "reference"})):
        out.mkdir()
        grid = write_json(out / "grid.json", {"grid": {"mode": ["full_fine_tuning"]},
                                              "fixed": dict(FIXED, data_path=str(data), **extra), "folds": [2],
                                              "prefix": "g"})
        run(code, "generate_jobs.py", grid, "-o", out / "jobs.json", "--script", code / "oct1_train.py", cwd=out)
        cluster = write_json(out / "cluster.json", {"servers": [{"host": "here", "local": True, "gpus": 0}],
                                                    "script_path": str(code / "oct1_train.py")})
        run(code, "run_distributed_training.py", "--cluster-config", cluster, "--jobs-config", out / "jobs.json",
            "--quiet", cwd=out)
        ledger = [json.loads(line) for line in (out / "runs" / "jobs" / "ledger.jsonl").read_text().splitlines()]
        # Job ids hash every flag (cpu_kernels too); base jobs are named by their keys (keyed_as_before).
        outcomes.append(sorted(("base" if r["job_id"].startswith("base-") else "job", r["status"]) for r in ledger))
    assert outcomes[0] == outcomes[1] and sum(status == "ok" for _, status in outcomes[0]) == 2  # a job, its base
    old = results(tmp_path / "old" / "experiments")
    assert_same(old, keyed_as_before(results(tmp_path / "new" / "experiments"), old))


def imports_of(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from engine import flags` imports engine.flags
            names |= {f"{node.module}.{alias.name}" if node.module in PACKAGES else node.module
                      for alias in node.names}
    return names


def test_the_top_level_holds_the_clis_and_the_two_design_card_modules():
    top = {p.name for p in REPO.glob("*.py")}
    assert top == CLIS | {"composed_loader.py", "plotting.py"}
    for package in PACKAGES:
        doc = ast.get_docstring(ast.parse((REPO / package / "__init__.py").read_text()))
        assert doc and "import" in doc, package  # it says what it may import


def test_the_engine_never_imports_the_runner_or_the_report():
    for path in (REPO / "engine").rglob("*.py"):
        wrong = {name for name in imports_of(path) if name.split(".")[0] in ("runner", "report")}
        assert not wrong, f"{path.relative_to(REPO)} imports {wrong}"


def test_the_runner_reaches_the_engine_through_its_named_modules_only():
    allowed = {"engine.flags", "engine.fileio", "engine.base_cache", "engine.provenance", "engine.data",
               "engine.results", "engine.modes", "engine.markers", "engine.user_model"}
    for path in (REPO / "runner").rglob("*.py"):
        engine = {name for name in imports_of(path) if name.split(".")[0] == "engine"}
        assert engine <= allowed, f"{path.relative_to(REPO)} imports {engine - allowed}"
    # The backends are apart: neither imports the other.
    for one, other in (("ssh", "runner.slurm"), ("slurm", "runner.ssh")):
        for path in (REPO / "runner" / one).rglob("*.py"):
            assert not [n for n in imports_of(path) if n.startswith(other)], path
