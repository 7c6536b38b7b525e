"""The GPU check: one command that proves the GPU paths on one device and measures them.

    python bench/gpu_check.py --out gpu_report      # needs CUDA; about 8 minutes on one H200
    python bench/gpu_check.py --quick --out q       # the same flow on tiny data on the CPU (CI runs it)

Writes report.json and report.md into --out and prints the Markdown:
  1. the CUDA-only tests (pytest marker `cuda`), each passed, failed or skipped;
  2. one fold, the original's behaviour (--preset original, eager, one process) against the fast
     path (CUDA graphs and fused AdamW; on the CPU: the fast kernels), same model, data and epochs
     (fixed: early stopping cannot fire), one CPU thread each: median seconds per epoch of each
     phase and the ratio;
  3. a grid of fine-tuning folds on one device (48 in the full check: 6 folds x 4 target_data_pct x
     full_fine_tuning and target_only_fine_tuning, --preset original, fixed epochs), their base
     models trained first, untimed, into a cache every run shares, then each way timed through the
     runner: (a) one eager process at a time, what the original does per GPU (on the first 12
     jobs: one at a time, its throughput does not depend on how many), (b) slots_per_gpu 4,
     (c) packs as "pack": "auto" sizes them, (d) those packs with CUDA graphs: folds per hour,
     training windows per second, the peak device memory of a process, each ratio to (a);
  4. agreement: each fold of (c) and (d) against the same fold of (a), the same seeds: the best
     epochs must be equal and every curve within TOLERANCE relative (on CUDA looser than on the
     CPU: convolutions run in TF32 by default and cuDNN's weight gradients are not deterministic,
     so even two eager runs differ in the last bits, and training carries that forward);
  5. the lab's manuscript model (--preset manuscript: 64 channels, dilation, dropout 0.5, batch 32,
     early stopping on F1): one fold both ways as in 2 (not with --quick), and the grid ways (a) and
     (d) as in 3 and 4 (packs of dropout members draw each member's masks as its solo run does).
On the CPU (--quick: 3 folds of full_fine_tuning) there are no graphs and "auto" packs one job per
process: (b) to (d) have 2 slots, (c) and (d) pack two, (d) asks for graphs and runs eagerly, and no
device memory is measured.
Without CUDA and without --quick: one line and exit 2.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_cpu_fold import run_fold  # noqa: E402
from dataset import synthetic  # noqa: E402
from runner import grid  # noqa: E402

FULL = {"data": {"n_participants": 6, "window_size": 3000, "n_train": 300, "n_val": 100, "n_test": 100},
        "target_data_pct": [0.25, 0.5, 0.75, 1.0], "modes": ["full_fine_tuning", "target_only_fine_tuning"],
        "epochs": 3, "one_at_a_time": 12, "fold_epochs": 5, "pack": "auto", "slots": 4}
QUICK = {"data": {"n_participants": 3, "window_size": 100, "n_train": 16, "n_val": 8, "n_test": 8},
         "target_data_pct": [1.0], "modes": ["full_fine_tuning"],
         "epochs": 2, "one_at_a_time": 1, "fold_epochs": 3, "pack": 2, "slots": 2}
TOLERANCE = {"cuda": 1e-3, "cpu": 1e-5}
CURVES = [f"{phase}_{split}_{what}" for phase in ("base", "target") for split in ("train", "val")
          for what in ("loss", "f1")]


def say(message):
    print(message, file=sys.stderr, flush=True)


def run(argv, cwd, env):
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"gpu_check.py: error: {Path(argv[1]).name} in {cwd} failed ({done.returncode}): "
                 f"{done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


# ---------------------------------------------------------------- 1. the CUDA-only tests

def cuda_tests(folder):
    """[(test id, outcome)] of the tests marked cuda, run in one pytest process here."""
    xml = folder / "cuda_tests.xml"
    # Only the files that mark a test cuda: collecting the whole suite would import all of it.
    files = [str(path) for path in sorted((ROOT / "tests").glob("test_*.py")) if "mark.cuda" in path.read_text()]
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "cuda", f"--junitxml={xml}", *files],
                   cwd=ROOT, capture_output=True, text=True)
    results = []
    for case in ElementTree.parse(xml).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        results.append((f"{case.get('classname').split('.')[-1]}::{case.get('name')}",
                        {"failure": "failed", "error": "failed"}.get(outcome, outcome)))
    return results


# ---------------------------------------------------------------- 2. one fold

def one_fold(data, folder, setting, cuda, preset="original"):
    """{phase: (original s/epoch, fast s/epoch)} and whether both found the same best epochs."""
    epochs, device = setting["fold_epochs"], "cuda" if cuda else "cpu"
    original_extra = ["--cuda_graphs", "off"] if cuda else ["--cpu_kernels", "reference"]
    original, original_best = run_fold(data, folder / "original", epochs, original_extra, 1, device, preset)
    # One CPU thread each, like with like: torch's default threads cost more than they give on tiny data.
    fast, fast_best = run_fold(data, folder / "fast", epochs, ["--cuda_graphs", "on"] if cuda else [], 1, device,
                               preset)
    return {phase: (original[phase], fast[phase]) for phase in original}, original_best == fast_best


# ---------------------------------------------------------------- 3. the grid

def make_jobs(folder, data, setting, cache, graphs, preset="original"):
    spec = {"prefix": "grid", "folds": "all",
            "fixed": {"data_path": str(data), "preset": preset, "max_epochs": setting["epochs"],
                      "early_stopping_patience": setting["epochs"] + 1,
                      "early_stopping_patience_target": setting["epochs"] + 1, "base_cache_dir": str(cache),
                      "cuda_graphs": graphs},
            "grid": {"target_data_pct": setting["target_data_pct"], "mode": setting["modes"]}}
    folder.mkdir(parents=True)
    # generate_jobs.py's expansion, in this process: a process of its own per grid costs a second or two.
    jobs, _ = grid.expand(spec, grid.load_script_parser(str(ROOT / "oct1_train.py")))
    (folder / "jobs.json").write_text(json.dumps(jobs))
    return jobs


def train_base_models(folder, data, setting, cache, env, preset="original"):
    """Untimed: every grid run reuses them and trains fine-tuning folds only."""
    jobs = make_jobs(folder, data, setting, cache, "off", preset)
    bases = {job["base_key"]: dict(job, mode="base_only") for job in jobs}
    (folder / "base.json").write_text(json.dumps(list(bases.values())))
    run([sys.executable, str(ROOT / "pack_train.py"), "base.json"], folder, env)


def run_grid(folder, data, setting, cache, env, cuda, way, preset="original"):
    """One way of running the grid through the runner: (wall seconds, the jobs it ran).
    way: (its name, slots, pack, --cuda_graphs, the first jobs only or None)."""
    _, slots, pack, graphs, first = way
    jobs = make_jobs(folder, data, setting, cache, graphs, preset)[:first]
    (folder / "jobs.json").write_text(json.dumps(jobs))
    (folder / "cluster.json").write_text(json.dumps({
        "servers": [{"host": "localhost", "local": True, "gpus": [0] if cuda else [], "slots_per_gpu": slots,
                     "pack": pack, "env": {"OMP_NUM_THREADS": 1}}], "script_path": str(ROOT / "oct1_train.py")}))
    wall = run([sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config", "cluster.json",
                "--jobs-config", "jobs.json", "--quiet"], folder, env)
    return wall, jobs


def results(folder, job):
    """metrics.json, losses.json and hyperparameters.json of a job's result folder."""
    result = next((folder / "experiments" / job["prefix"]).glob(f"fold{job['fold']}_*"))
    return {name: json.loads((result / f"{name}.json").read_text())
            for name in ("metrics", "losses", "hyperparameters")}


def training_windows(setting, job):
    """Windows one job trains on over its fixed epochs (base train+val, and its target share)."""
    d = setting["data"]
    target = round(job.get("target_data_pct", 1.0) * d["n_train"])
    base = (d["n_participants"] - 1) * (d["n_train"] + d["n_val"]) if job["mode"] == "full_fine_tuning" else 0
    return setting["epochs"] * (base + target)


def same_fold(job):
    return job["fold"], job["mode"], job.get("target_data_pct", 1.0)


def agreement(folder, jobs, reference_folder, reference_jobs, tolerance):
    """(folds compared, folds whose best epochs differ, the largest relative curve gap, folds past tolerance)."""
    reference = {same_fold(job): job for job in reference_jobs}
    compared, epochs_differ, worst, past = 0, [], 0.0, []
    for job in jobs:
        if same_fold(job) not in reference:
            continue
        a, b = results(reference_folder, reference[same_fold(job)]), results(folder, job)
        compared += 1
        if any(a["losses"][k] != b["losses"][k] for k in ("best_base_epoch", "best_target_epoch")):
            epochs_differ.append(same_fold(job))
        gap = max((abs(x - y) / max(abs(x), 1e-12) for curve in CURVES
                   for x, y in zip(a["losses"][curve], b["losses"][curve]) if x is not None), default=0.0)
        worst = max(worst, gap)
        if gap > tolerance:
            past.append(same_fold(job))
    return compared, epochs_differ, worst, past


def grid_ways(tmp, data, setting, env, cuda, ways, preset="original"):
    """The grid's base models (untimed), then each way through the runner: (the rows of the report's
    table, {way: its agreement with the first way} for each way that packs)."""
    cache = tmp / f"base_models_{preset}"
    train_base_models(tmp / f"bases_{preset}", data, setting, cache, env, preset)
    rows, runs = [], {}
    for number, way in enumerate(ways):
        folder = tmp / f"grid_{preset}{number}"
        wall, jobs = run_grid(folder, data, setting, cache, env, cuda, way, preset)
        found = [results(folder, job) for job in jobs]
        peaks = [r["metrics"].get("peak_device_memory_mb") for r in found]
        windows = sum(training_windows(setting, job) for job in jobs)
        rows.append({"way": way[0], "folds": len(jobs), "wall_s": wall,
                     "folds_per_hour": len(jobs) / wall * 3600, "windows_per_s": windows / wall,
                     "peak_mib": max(peaks) if all(p is not None for p in peaks) else None,
                     "pack_sizes": sorted({r["hyperparameters"].get("pack_size", 1) for r in found})})
        runs[way[0]] = (folder, jobs)
        say(f"    {preset} {way[0]}: {len(jobs)} folds in {wall:.1f} s")
    tolerance = TOLERANCE["cuda" if cuda else "cpu"]
    packed = [way for way in ways if way[2] != 1]  # the ways that pack
    return rows, {way[0]: agreement(*runs[way[0]], *runs[ways[0][0]], tolerance) for way in packed}


# ---------------------------------------------------------------- the report

def grid_table(rows):
    lines = ["| way | folds | jobs per process | wall s | folds/hour | windows/s | peak MiB per process "
             "| ratio to (a) |", "|---|---|---|---|---|---|---|---|"]
    base = rows[0]["folds_per_hour"]
    for row in rows:
        peak = "n/a (CPU)" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        sizes = ", ".join(map(str, row["pack_sizes"]))
        lines.append(f"| {row['way']} | {row['folds']} | {sizes} | {row['wall_s']:.1f} | "
                     f"{row['folds_per_hour']:.0f} | {row['windows_per_s']:.0f} | {peak} | "
                     f"{row['folds_per_hour'] / base:.2f}x |")
    return lines


def agreement_table(agreements):
    lines = ["| way | folds compared | best epochs differ | largest curve gap | past tolerance |", "|---|---|---|---|---|"]
    for way, (compared, differ, worst, past) in agreements.items():
        lines.append(f"| {way} | {compared} | {len(differ)} | {worst:.2e} | {len(past)} |")
    return lines


def fold_table(fold):
    lines = ["| phase | original s/epoch | fast s/epoch | ratio |", "|---|---|---|---|"]
    # The log gives epoch times to 10 ms: an epoch of --quick's tiny data may read 0.00 s.
    lines += [f"| {phase} | {o:.3f} | {f:.3f} | {f'{o / f:.2f}x' if f else 'n/a'} |"
              for phase, (o, f) in fold["seconds"].items()]
    return lines + ["", f"Same best epochs: {fold['same_best_epochs']}. Both runs use one CPU thread."]


def markdown(report):
    lines = [f"# GPU check: {report['device']} ({report['date']}{', --quick' if report['quick'] else ''})", "",
             "## CUDA-only tests", "", "| test | outcome |", "|---|---|"]
    lines += [f"| {test} | {outcome} |" for test, outcome in report["cuda_tests"]]
    lines += ["", "## One fold: the original's behaviour against the fast path", "", *fold_table(report["fold"])]
    if report["quick"]:
        lines += ["On --quick's tiny data an epoch is a few steps, so these times measure start-up and "
                  "per-step overhead, not training speed: read the ratio on the full check."]
    lines += ["", "## The grid", "", *grid_table(report["grid"])]
    lines += ["", f"## Agreement with (a), tolerance {report['tolerance']:g} relative", "",
              *agreement_table(report["agreement"])]
    manuscript = report["manuscript"]
    fold = (["One fold, the reference path against the fast path:", "", *fold_table(manuscript["fold"])]
            if manuscript["fold"] else ["One fold: not with --quick (the same code as above)."])
    lines += ["", "## The manuscript model (--preset manuscript)", "", *fold, "", "The grid:", "",
              *grid_table(manuscript["grid"]),
              "", f"Agreement with (a), tolerance {report['tolerance']:g} relative:", "",
              *agreement_table(manuscript["agreement"])]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for report.json and report.md (made if missing)")
    parser.add_argument("--quick", action="store_true", help="tiny data on the CPU: that the whole flow runs")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.quick
    if not cuda and not args.quick:
        print("gpu_check.py: error: needs a CUDA device (none visible); --quick runs the same flow on the CPU",
              file=sys.stderr)
        return 2
    setting = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    report = {"device": torch.cuda.get_device_name(0) if cuda else "CPU", "quick": args.quick,
              "date": time.strftime("%Y-%m-%d"), "tolerance": TOLERANCE["cuda" if cuda else "cpu"]}
    with tempfile.TemporaryDirectory(prefix="gpu_check") as tmp:
        tmp = Path(tmp)
        say("1/4 the CUDA-only tests")
        report["cuda_tests"] = cuda_tests(out)
        data = tmp / "data"
        synthetic.write_synthetic_dataset(str(data), **setting["data"])
        say("2/4 one fold, the original's behaviour and the fast path")
        seconds, same = one_fold(data, tmp / "fold", setting, cuda)
        report["fold"] = {"seconds": seconds, "same_best_epochs": same}
        say("3/4 the grid: base models first (untimed), then four ways, and their agreement with (a)")
        slots = setting["slots"]
        ways = [("(a) one eager process at a time", 1, 1, "off", setting["one_at_a_time"]),
                (f"(b) slots_per_gpu {slots}", slots, 1, "off", None),
                (f"(c) packs (pack {setting['pack']}), {slots} slots", slots, setting["pack"], "off", None),
                (f"(d) packs (pack {setting['pack']}), {slots} slots, CUDA graphs", slots, setting["pack"], "auto",
                 None)]
        report["grid"], report["agreement"] = grid_ways(tmp, data, setting, env, cuda, ways)
        say("4/4 the manuscript model: one fold both ways (not with --quick: the same code as 2), the grid "
            "ways (a) and (d)")
        fold = None
        if not args.quick:
            seconds, same = one_fold(data, tmp / "fold_manuscript", setting, cuda, "manuscript")
            fold = {"seconds": seconds, "same_best_epochs": same}
        rows, agreements = grid_ways(tmp, data, setting, env, cuda, [ways[0], ways[3]], "manuscript")
        report["manuscript"] = {"fold": fold, "grid": rows, "agreement": agreements}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "report.md").write_text(text)
    print(text)
    failed = [test for test, outcome in report["cuda_tests"] if outcome == "failed"]
    agreements = {**report["agreement"], **{f"manuscript {way}": found for way, found in
                                            report["manuscript"]["agreement"].items()}}
    disagree = [way for way, (_, differ, _, past) in agreements.items() if differ or past]
    if failed or disagree:
        say(f"gpu_check.py: {len(failed)} CUDA test(s) failed; disagreeing with (a): {', '.join(disagree) or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
