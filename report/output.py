"""The report written out: per_fold.csv, per_participant.csv, per_config.csv (comparisons.csv and
data_efficiency.csv when there are some), the plots and report.html (with --format latex the tables'
.tex files and macros.tex too) into a new folder reports/NAME (NAME-2, NAME-3, ... when taken, so no
report is overwritten) or into -o, and the tables on stdout as Markdown, CSV, JSON or LaTeX."""
import glob
import io
import itertools
import json
import os
import sys
from pathlib import Path

from engine.fileio import staged_folder, write_atomic
from report import classes, compare, efficiency, html_page, latex
from report.plots import write_plots
from report.runs import METRICS, expand_inputs, find_prefixes, load_runs, warn
from report.tables import summarize_all
from report.text import (config_columns, config_note, config_table, fold_columns, fold_table, markdown,
                         participant_columns, participant_table, seeds_replicate, write_csv)

TABLE_NAMES = ["per_fold", "per_participant", "per_config", "per_class", "comparisons", "data_efficiency"]
# What a report writes; in -o, the ones this report does not write are an earlier report's, removed
# (a .tex file only when its first line says this tool wrote it: -o may be a manuscript's folder).
OWN_FILES = ({f"{name}.csv" for name in TABLE_NAMES} | {f"{name}.tex" for name in TABLE_NAMES}
             | {"macros.tex", "report.html"})
TEX_MARK = "% summarize_results.py"


def latex_file(name, headers, lines):
    return f"{TEX_MARK}: {name}.tex\n" + latex.tabular(headers, lines)


def remove_stale(out_dir, written):
    """An earlier report's files in -o that this one does not write."""
    for name in OWN_FILES - set(written):
        path = out_dir / name
        if path.suffix == ".tex" and path.is_file():
            with open(path, encoding="utf-8", errors="replace") as f:
                if not f.readline().startswith(TEX_MARK):
                    continue
        path.unlink(missing_ok=True)


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


def csv_tables(summary):
    """{name: (rows, columns)} of the CSVs the data has."""
    tables = {"per_fold": (summary.fold_rows, fold_columns(summary.varying, summary.seed_keys)),
              "per_participant": (summary.participant_rows, participant_columns(summary.varying)),
              "per_config": (summary.config_rows, config_columns(summary.varying))}
    if summary.class_rows:  # recognizers only
        tables["per_class"] = (summary.class_rows, classes.columns(summary.varying))
    if summary.comparisons:
        tables["comparisons"] = (summary.comparisons, compare.COLUMNS)
    if summary.efficiency:
        tables["data_efficiency"] = (summary.efficiency, efficiency.columns(summary))
    return tables


def shown_tables(summary, metric):
    """{name: (heading, note, headers, lines)} of the tables shown as Markdown, LaTeX and HTML,
    in reading order; the per-participant one only where seeds replicate, the per-class one only
    where there are recognizers."""
    f1_name = METRICS[metric][2]
    tables = {"per_config": ("Per configuration", config_note(metric, bool(summary.class_rows)),
                             *config_table(summary.config_rows, summary.varying))}
    if seeds_replicate(summary.participant_rows):
        tables["per_participant"] = ("Per participant", "Each figure: mean ± sd over the participant's seeds.",
                                     *participant_table(summary.participant_rows, summary.varying))
    if summary.class_rows:
        tables["per_class"] = ("Per class", classes.note(summary), *classes.table(summary.class_rows, summary.varying))
    if summary.comparisons:
        tables["comparisons"] = (f"Comparisons of {summary.compared}",
                                 f"Difference = second − first in {f1_name}, paired by participant (seed means); "
                                 "95% CI: bootstrap over participants; p in brackets: Holm-adjusted across "
                                 "these comparisons.", *compare.table(summary.comparisons, f1_name))
    if summary.efficiency:
        tables["data_efficiency"] = ("Data efficiency", f"{f1_name} across participants at each share of target "
                                     "data; retention: the median over the series' median on all data.",
                                     *efficiency.table(summary.efficiency, f1_name))
    tables["per_fold"] = ("Per fold", None, *fold_table(summary.fold_rows, summary.varying, summary.seed_keys))
    return tables


def write_outputs(out_dir, summary, args, title):
    """The CSVs, the plots, report.html and, for --format latex, the .tex files; returns the names
    of the files written and the number of plots."""
    written = {}
    for name, (rows, columns) in csv_tables(summary).items():
        text = io.StringIO(newline="")
        write_csv(text, rows, columns)
        written[f"{name}.csv"] = text.getvalue()
    shown = shown_tables(summary, args.metric)
    if args.format == "latex":
        written.update({f"{name}.tex": latex_file(name, headers, lines)
                        for name, (_, _, headers, lines) in shown.items()})
        written["macros.tex"] = latex.macros_tex(latex.macros(summary, args.metric))
    plots = write_plots(summary, out_dir, args.ylim, METRICS[args.metric][2])
    written["report.html"] = html_page.page(title, list(shown.values()), plots)
    remove_stale(out_dir, written)
    for name, text in written.items():
        write_atomic(out_dir / name, text)
    return sorted(written, key=lambda name: (name.endswith(".html"), name.endswith(".tex"))), len(plots)


def print_tables(summary, args):
    """The tables on stdout in --format's form."""
    if args.format == "json":
        print(json.dumps({"metric": args.metric, **{name: rows for name, (rows, _) in csv_tables(summary).items()}},
                         indent=2))
        return
    shown = shown_tables(summary, args.metric)
    order = ["per_fold"] + [name for name in shown if name != "per_fold"]  # the folds first, as always
    if args.format == "csv":
        tables = csv_tables(summary)
        for number, name in enumerate(order):
            if number:
                print()
            write_csv(sys.stdout, *tables[name])
    elif args.format == "latex":
        print("\n".join(latex_file(name, *shown[name][2:]) for name in order))
    else:
        parts = []
        for name in order:
            _, note, headers, lines = shown[name]
            parts.append((f"{note}\n\n" if note else "") + markdown(headers, lines))
        print("\n\n".join(parts))


def load(args, prog):
    """The complete runs of the inputs, or an exit status after a one-line error."""
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
    return runs


def main(args, prog="summarize_results.py"):
    """The report of summarize_results.py's parsed arguments; returns the exit status."""
    runs = load(args, prog)
    if isinstance(runs, int):
        return runs
    summary = summarize_all(runs)
    if args.compare:
        problem = compare.problem(args.compare, summary)
        if problem:  # before anything is written
            print(f"{prog}: error: {problem}", file=sys.stderr)
            return 2
        compare.compare(args.compare, summary)
    efficiency.efficiency(summary)
    classes.per_class(summary)
    flagged = [row for row in summary.fold_rows if row["under_trained"]]
    if flagged:
        warn(f"{len(flagged)} run(s) had their best epoch at their last one, so early stopping never fired "
             f"(may be under-trained: raise --max_epochs): see the under-trained column")

    name = report_name(args.inputs)
    title = f"Personalization report: {name}"
    if args.output:
        out_dir = Path(args.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        files, n_plots = write_outputs(out_dir, summary, args, title)
    else:
        # A new folder, written aside and renamed, so no earlier report is touched.
        root = Path("reports")
        root.mkdir(exist_ok=True)
        with staged_folder(root / "report") as tmp:
            files, n_plots = write_outputs(tmp, summary, args, title)
            out_dir = publish_report(tmp, root, name)
    print_tables(summary, args)
    print(f"wrote {', '.join(files)} and {n_plots} plot(s) to {out_dir}", file=sys.stderr)
    return 0
