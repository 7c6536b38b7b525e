"""bench/gpu_check.py, the one GPU check: its --quick flow on the CPU writes every part of the
report, so the script cannot break unseen where CI has no GPU; without CUDA the plain command
refuses in one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"


def test_the_quick_check_writes_every_part_of_the_report(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "q")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    markdown = (tmp_path / "q" / "report.md").read_text()
    assert done.stdout.strip() == markdown.strip() and report["device"] == "CPU" and report["quick"] is True
    # 1. every CUDA-only test is listed, skipped here
    assert len(report["cuda_tests"]) >= 7 and {outcome for _, outcome in report["cuda_tests"]} == {"skipped"}
    # 2. one fold both ways, per phase
    assert set(report["fold"]["seconds"]) == {"base", "target"} and report["fold"]["same_best_epochs"] is True
    # 3. four ways through the grid, the baseline first; packs trained several jobs per process
    ways = report["grid"]
    assert [row["way"][:3] for row in ways] == ["(a)", "(b)", "(c)", "(d)"]
    assert all(row["folds"] > 0 and row["folds_per_hour"] > 0 and row["windows_per_s"] > 0 for row in ways)
    assert max(ways[2]["pack_sizes"]) > 1 and max(ways[3]["pack_sizes"]) > 1
    assert all(row["peak_mib"] is None for row in ways)  # no device memory on the CPU
    # 4. the packed folds agree with the same folds run alone
    for way, (compared, differ, worst, past) in report["agreement"].items():
        assert compared > 0 and differ == [] and past == [] and worst <= report["tolerance"], way
    # 5. the manuscript model: its grid eager and packed (dropout members), agreeing (its one fold: not quick)
    manuscript = report["manuscript"]
    assert manuscript["fold"] is None
    assert [row["way"][:3] for row in manuscript["grid"]] == ["(a)", "(d)"]
    assert max(manuscript["grid"][1]["pack_sizes"]) > 1
    for way, (compared, differ, worst, past) in manuscript["agreement"].items():
        assert compared > 0 and differ == [] and past == [] and worst <= report["tolerance"], way
    for title in ("CUDA-only tests", "One fold", "The grid", "Agreement", "The manuscript model"):
        assert title in markdown


def test_without_cuda_the_plain_check_refuses_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r")], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "needs a CUDA device" in done.stderr
    assert not (tmp_path / "r").exists()
