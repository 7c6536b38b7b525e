#!/usr/bin/env python3
"""Per-participant tables, statistics and plots from finished LOPO experiments.

    python summarize_results.py experiments/demo ['experiments/grid_*' ...] [-o DIR]
                                [--format md|csv|json|latex] [--compare SETTING]
                                [--metric f1|f1_pos] [--ylim LOW HIGH]

Each input is an `experiments/{prefix}` folder or a glob of them; a folder
without fold*_* folders is searched below for the prefixes that have them (a
grid's prefix finds its configuration folders). Every `fold{k}_{target}/` is
one run; its hyperparameters.json and metrics.json give one row of the
per-fold table. Runs of one participant that differ only in their seeds are
replicates: their mean (and sd) over the seeds is the participant's row of the
per-participant table. The participants of a configuration (below) are
aggregated, each once, into the per-configuration table.

F1 is macro F1 (the mean of the positive- and negative-class F1, as the
original; a recognizer's, of K >= 3 classes: the mean over its classes),
`--metric f1_pos` reports the positive class's F1 instead (a detector's; it
skips recognizer runs); the report names the one it shows. Recognizers also
get per-class tables (report/classes.py).

--compare SETTING compares every two configurations that differ only in that
setting, paired by participant (report/compare.py). When target_data_pct
varies, a data-efficiency table follows (report/efficiency.py).

Writes per_fold.csv, per_participant.csv, per_config.csv (per_class.csv,
comparisons.csv and data_efficiency.csv when there are some), the PNGs and report.html (one
self-contained page) into a new folder reports/NAME (NAME from the inputs;
NAME-2, NAME-3, ... when taken, so no report is overwritten), or into -o, and
prints the tables to stdout as Markdown (or CSV, JSON or LaTeX with --format;
latex also writes each table's .tex and macros.tex). Warnings go to stderr; no
matching input, no fold folder, no complete result or a --compare setting that
cannot be compared is a one-line error with exit status 2.

Decisions:
- A run is complete when both JSON files parse and metrics.json holds the F1
  its mode needs: base F1 (best_base_model_target_test_f1) unless target_only,
  personalized F1 (best_target_model_target_test_f1) unless base_only. An
  incomplete fold folder is skipped with a warning that names it. Other
  folders (a running job's hidden temporary sibling, a report folder) are not
  runs and are passed over silently.
- A configuration is the mode plus every hyperparameter except the per-fold
  and bookkeeping ones in NOT_SETTINGS and the seeds (seed, seed_finetune): runs
  that differ only in their seeds are replicates of one configuration. Every
  figure across participants, and every test, takes each participant once, as
  the mean over its seeds; n_seeds is the seeds per participant ("2-3", and a
  warning, when participants have different counts). data_path is kept: other
  data is another experiment. n_base_participants becomes the resolved number
  of base participants, so 'all' and its number are one configuration. A target_only
  run has no base phase, so its BASE_PHASE_SETTINGS are blank and do not make
  a setting "vary". A setting a run lacks counts as blank (null).
- The same configuration and seeds twice for one participant (a rerun under
  another prefix): the first input wins and the other is skipped with a
  warning, so a seed mean counts each run once.
- Target-only F1 of a run: the personalized F1 of the target_only runs of the
  same participant whose settings equal the run's on everything but mode, seeds
  and the BASE_PHASE_SETTINGS (so same target_data_pct, batch_size, lr, ...),
  their mean over seeds.
  No exact match leaves the cell blank; a near match would mislead.
- Gain = personalized - base, rounded to 1e-12 so float noise cannot turn a
  tie into a change. Gain % = gain / base * 100 (blank when base = 0). Room
  captured = gain / (1 - base) (blank when base = 1).
- Aggregates use the values that exist. sd is the sample sd (n - 1), blank for
  a single value. A responder is a participant with gain > 0; the rate is over
  the participants that have both F1s.
- Wilcoxon signed-rank test on the gains, two-sided (scipy.stats.wilcoxon): zero
  differences are dropped (Wilcoxon's rule), ties get average ranks, W = min(W+, W-).
  For up to 20 differences p is exact; above that, the normal approximation with
  tie correction and no continuity correction.
- Precision and recall are the positive class's (metrics.json's
  ..._target_test_precision and _recall): of the base model, of the model the
  target phase ends with (personalized, or a target_only run's own), and the
  change from one to the other; blank in runs made before they were recorded,
  and in recognizers (metrics.json has them null).
- Recognizers (hyperparameters.json's classes: K >= 3 names): per configuration
  and class, the base and final model's F1, precision and recall and the
  change, means across participants of their seed means (per_class.csv, a
  table, LaTeX, macros, per_class_config{N}.png). A class counts for a fold
  only where its test split has windows of it. Detector configurations have no
  per-class rows (their positive class is precision and recall), so a report
  of detectors only is as before. classes is not a setting: it follows the data.
- Epochs: best epochs are counted within their phase (metrics.json counts the
  target phase after the base phase's epochs). A run whose best epoch is its
  phase's last one never early-stopped: the under_trained column names the
  phase, and a warning says how many runs (raise --max_epochs).
- Plots: paired_config{N}.png per configuration with paired F1s,
  scores_config{N}.png per configuration without (target_only, base_only), and
  f1_vs_{setting}.png for target_data_pct, target_batch_pct and
  n_base_participants when that setting takes two or more numeric values. Their
  y is the run's final F1 (personalized; base for base_only), one line per mode,
  band = mean +- sd across folds. Where other settings vary too, a
  participant's F1 at a point is first averaged over them, so every fold counts
  once (the per-configuration table keeps them apart). The y axis is fixed
  (0-1, or --ylim) so noise never looks like an effect; participant labels are
  spread so they never overlap. Each participant is a point (the mean over its
  seeds). compare_{SETTING}.png shows --compare's per-participant differences,
  data_efficiency.png the median and IQR against target_data_pct. Files of
  these names left in -o by an earlier report are removed first.

The report is the report/ package (runs.py: loading; tables.py, stats.py: the tables and
the tests; compare.py, efficiency.py, classes.py: --compare, data efficiency, per class; text.py, latex.py,
html_page.py, plots.py: Markdown, CSV, LaTeX, HTML and plots; output.py: writing it); this
file is its command line.
"""
import argparse
import sys

from report import output
from report.runs import METRICS


def build_parser():
    parser = argparse.ArgumentParser(prog="summarize_results.py", allow_abbrev=False,
                                     description="Per-participant tables, statistics and plots of finished "
                                                 "experiments (experiments/PREFIX/fold*_*/).")
    parser.add_argument("inputs", nargs="+", help="experiments/PREFIX folders or globs of them; a folder "
                                                  "without fold*_* folders is searched below for prefixes")
    parser.add_argument("-o", "--output", help="folder for the CSVs and PNGs, replacing its earlier report "
                                               "(default: a new reports/NAME, NAME-2, ... from the inputs)")
    parser.add_argument("--format", choices=["md", "csv", "json", "latex"], default="md",
                        help="what stdout gets (default md); latex also writes the tables' .tex files and macros.tex")
    parser.add_argument("--compare", metavar="SETTING",
                        help="compare every two configurations that differ only in SETTING (say mode), paired by "
                             "participant: mean difference with a bootstrap CI, paired t-test, Wilcoxon, "
                             "Shapiro-Wilk, Cohen's d_z, rank-biserial, Holm-adjusted p; comparisons.csv and a plot "
                             "(default none)")
    parser.add_argument("--metric", choices=sorted(METRICS), default="f1",
                        help="f1: macro F1, the mean of the positive- and negative-class F1 (default, as the "
                             "original; a recognizer's: over its classes); f1_pos: the positive class's F1 "
                             "(detectors; recognizer runs are skipped)")
    parser.add_argument("--ylim", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                        help="y range of the plots (default 0 1)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.ylim[0] < args.ylim[1]:
        parser.error(f"--ylim {args.ylim[0]:g} {args.ylim[1]:g}: LOW must be below HIGH")
    return output.main(args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
