"""The report written out: per_fold.csv, per_config.csv and the plots into a new folder
reports/NAME (NAME-2, NAME-3, ... when taken, so no report is overwritten) or into -o, and
the tables on stdout as Markdown, CSV or JSON."""
import glob
import io
import itertools
import json
import os
import sys
from pathlib import Path

from engine.fileio import staged_folder, write_atomic
from report.plots import write_plots
from report.runs import METRICS, expand_inputs, find_prefixes, load_runs, warn
from report.tables import summarize
from report.text import config_columns, config_markdown, fold_columns, fold_markdown, write_csv


def report_name(patterns):
    """A report folder name from the inputs: the last folder before any glob part of each."""
    names = []
    for pattern in map(str, patterns):
        parts = Path(pattern).parts
        plain = [part for part in itertools.takewhile(lambda part: not glob.has_magic(part), parts)]
        name = (plain[-1] if plain else "report").strip("/") or "report"
        if name not in names:
            names.append(name)
    return "+".join(names)


def publish_report(tmp, root, name):
    """Rename the finished report folder to root/name, or name-2, name-3, ... when taken."""
    for n in itertools.count(1):
        final = root / (name if n == 1 else f"{name}-{n}")
        if not final.exists():
            try:
                os.rename(tmp, final)
                return final
            except OSError:  # taken meanwhile by another report
                continue


def write_outputs(out_dir, fold_rows, config_rows, varying, ylim, f1_name):
    """per_fold.csv, per_config.csv and the plots; returns the number of plots."""
    for name, rows, columns in (("per_fold.csv", fold_rows, fold_columns(varying)),
                                ("per_config.csv", config_rows, config_columns(varying))):
        text = io.StringIO(newline="")
        write_csv(text, rows, columns)
        write_atomic(out_dir / name, text.getvalue())
    return len(write_plots(fold_rows, config_rows, varying, out_dir, ylim, f1_name))


def main(args, prog="summarize_results.py"):
    """The report of summarize_results.py's parsed arguments; returns the exit status."""
    folders = expand_inputs(args.inputs)
    if not folders:
        print(f"{prog}: error: no folder matches {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    prefix_dirs, empty = find_prefixes(folders)
    if not prefix_dirs:
        print(f"{prog}: error: no fold*_* folders in or under {' '.join(map(str, empty))}", file=sys.stderr)
        return 2
    for folder in empty:
        warn(f"{folder}: no fold*_* folders in or under it, skipped")
    runs = load_runs(prefix_dirs, args.metric)
    if not runs:
        print(f"{prog}: error: no complete results in {' '.join(map(str, prefix_dirs))}", file=sys.stderr)
        return 2
    fold_rows, config_rows, varying = summarize(runs)
    flagged = [row for row in fold_rows if row["under_trained"]]
    if flagged:
        warn(f"{len(flagged)} run(s) had their best epoch at their last one, so early stopping never fired "
             f"(may be under-trained: raise --max_epochs): see the under-trained column")

    f1_name = METRICS[args.metric][2]
    if args.output:
        out_dir = Path(args.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        n_plots = write_outputs(out_dir, fold_rows, config_rows, varying, args.ylim, f1_name)
    else:
        # A new folder, written aside and renamed, so no earlier report is touched.
        root = Path("reports")
        root.mkdir(exist_ok=True)
        with staged_folder(root / "report") as tmp:
            n_plots = write_outputs(tmp, fold_rows, config_rows, varying, args.ylim, f1_name)
            out_dir = publish_report(tmp, root, report_name(args.inputs))

    if args.format == "json":
        print(json.dumps({"metric": args.metric, "per_fold": fold_rows, "per_config": config_rows}, indent=2))
    elif args.format == "csv":
        write_csv(sys.stdout, fold_rows, fold_columns(varying))
        print()
        write_csv(sys.stdout, config_rows, config_columns(varying))
    else:
        print(fold_markdown(fold_rows, varying), "", config_markdown(config_rows, varying, args.metric), sep="\n")
    print(f"wrote per_fold.csv, per_config.csv and {n_plots} plot(s) to {out_dir}", file=sys.stderr)
    return 0
