"""One fold on the CPU: the original's behaviour (--preset original, eager, one thread, the engine's
historic kernels) against the fast path (--preset original, the fast kernels, the cores this process
owns), side by side on the same data and seeds: seconds per epoch of each phase and their ratio; then
the same for the lab's manuscript model (--preset manuscript: 64 channels, dilation, dropout 0.5,
batch 32), reference kernels against fast ones.

Writes demo-shaped data (6 participants x 120/40/40 windows of 6 x 3000, the synthetic dataset of
earlier releases) to a temporary folder and runs fold 0 of full_fine_tuning (batch 64, a fixed
number of epochs per phase: early stopping cannot fire), each run in its own process. Seconds per
epoch = the median of the phase's epochs (training and validation), as the run's log reports them.
Then one training step of the `test` model, three ways: the historic kernels, the fast kernels,
and the fast kernels compiled by torch.compile (its compile time shown apart), which the engine
does not use: on the CPU it costs tens of seconds and gains nothing over the fast kernels.

    python bench/bench_cpu_fold.py              # about 4 minutes on 2 cores
    python bench/bench_cpu_fold.py --quick      # small data, a few epochs, no compile: that it runs
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from dataset import synthetic  # noqa: E402
from engine import flags  # noqa: E402
from engine.models import build_model  # noqa: E402

EPOCH_LINE = re.compile(r"(base|target) epoch (\d+): .* \| ([\d.]+)s, ")
BEST = re.compile(r"(base|target): \d+ epochs, best epoch (\d+)")


def run_fold(data, out, epochs, extra, threads=None, device="cpu", preset="original"):
    """One fold of the preset (original: the `test` model at batch 64; manuscript: the lab's 64-channel
    dilated model with dropout at batch 32) in its own process, fixed epochs: ({phase: median seconds per
    epoch}, {phase: best epoch}). bench/gpu_check.py times its GPU fold with it too."""
    batch = ["--batch_size", "64"] if preset == "original" else []
    argv = [sys.executable, str(REPO / "oct1_train.py"), "--data_path", str(data), "--fold", "0",
            "--mode", "full_fine_tuning", *batch, "--max_epochs", str(epochs), "--preset", preset,
            "--early_stopping_patience", str(epochs + 1), "--early_stopping_patience_target", str(epochs + 1),
            "--device", device, "--no_base_cache", "--experiments_dir", str(out),
            *(["--threads", str(threads)] if threads else []), *extra]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{Path(sys.argv[0]).name}: error: the fold failed: {done.stderr.strip().splitlines()[-1:]}")
    log = next(Path(out).rglob("train.log")).read_text()
    seconds = {}
    for phase, _, elapsed in EPOCH_LINE.findall(log):
        seconds.setdefault(phase, []).append(float(elapsed))
    return {phase: statistics.median(s) for phase, s in seconds.items()}, dict(BEST.findall(log))


def step_times(window, threads, steps, compiled=True, preset="original"):
    """ms per training step of the preset's model (batch 64, or the manuscript's 32, x 6 x window):
    historic kernels, fast kernels and, with `compiled`, fast kernels under torch.compile; and the
    compile's seconds."""
    torch.set_num_threads(threads)
    architecture = {name: flags.PRESETS[preset].get(name, flags.default_of(flags.BY_NAME[name]))
                    for name in flags.ARCHITECTURE_FLAGS}
    batch = flags.PRESETS[preset].get("batch_size", 64)
    x, y = torch.randn(batch, 6, window), (torch.rand(batch) > 0.5).float()
    loss_fn = nn.BCEWithLogitsLoss()
    times, compile_s = {}, None
    for name in ("historic", "fast", "fast + torch.compile")[:3 if compiled else 2]:
        torch.manual_seed(0)
        model = build_model("test", 6, fast_kernels=name != "historic", architecture=architecture)
        forward = torch.compile(model) if "compile" in name else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            loss = loss_fn(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        start = time.perf_counter()
        step()
        if "compile" in name:
            compile_s = time.perf_counter() - start
        for _ in range(2):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times[name] = (time.perf_counter() - start) / steps * 1000
    return times, compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per phase (default 20)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="the fast path's threads (default: the cores this process owns)")
    parser.add_argument("--quick", action="store_true", help="small data and 2 epochs: that it runs")
    parser.add_argument("--presets", default="original,manuscript",
                        help="the protocols to time, comma-separated (default original,manuscript)")
    args = parser.parse_args()
    window, n_train, epochs, steps = (3000, 120, args.epochs, 20) if not args.quick else (300, 24, 2, 3)
    for preset in args.presets.split(","):
        compare_fold(preset, window, n_train, epochs, args.threads)
        for threads in sorted({1, args.threads}):
            times, compile_s = step_times(window, threads, steps, compiled=not args.quick, preset=preset)
            print(f"one training step, {threads} thread(s): " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items())
                  + (f" (compile {compile_s:.1f} s)" if compile_s else " (torch.compile: not with --quick)")
                  + f"; fast / historic {times['historic'] / times['fast']:.2f}x")


def compare_fold(preset, window, n_train, epochs, threads):
    """One fold of the preset, the reference kernels on one thread against the fast ones on `threads`."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        synthetic.write_synthetic_dataset(str(data), window_size=window, n_train=n_train, n_val=n_train // 3,
                                          n_test=n_train // 3)
        print(f"--preset {preset}: fold 0, full_fine_tuning, {epochs} epochs per phase, 6 participants x "
              f"{n_train}/{n_train // 3}/{n_train // 3} windows of 6 x {window}, batch "
              f"{flags.PRESETS[preset].get('batch_size', 64)}")
        original, original_best = run_fold(data, Path(tmp) / "original", epochs, ["--cpu_kernels", "reference"], 1,
                                           preset=preset)
        fast, fast_best = run_fold(data, Path(tmp) / "fast", epochs, [], threads, preset=preset)
    for phase in ("base", "target"):
        print(f"{phase:6s} s/epoch: reference (historic kernels, 1 thread) {original[phase]:.3f}, fast "
              f"(fast kernels, {threads} threads) {fast[phase]:.3f}, ratio {original[phase] / fast[phase]:.2f}x")
    print(f"best epochs: reference {original_best}, fast {fast_best}"
          + ("" if original_best == fast_best else "  (they differ)"))


if __name__ == "__main__":
    main()
