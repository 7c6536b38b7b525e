"""Per-class scores of recognizers (K >= 3 classes). Per configuration and class: the base model's
and the final model's (personalized, or a target_only run's own) F1, precision and recall on the
target's test split, and the change from one to the other; each a mean across participants, every
participant once, as the mean over its seeds.

A class counts in a fold only where the fold's test split has windows of it (the confusion matrix's
row): elsewhere its recall is undefined, and a 0 would pull its mean down. Both models are scored
on the same windows, so the base and the final means are over the same participants.
Detector configurations have no rows: their positive class is the precision and recall columns of
the other tables, and their report stays as it was.
"""
from report.runs import as_number
from report.stats import describe
from report.text import cell, change_text

SCORES = ("f1", "precision", "recall")
FIGURES = [name for score in SCORES for name in (f"base_{score}", score, f"{score}_change")]


def columns(varying):
    return ["config", "mode"] + varying + ["class", "n"] + FIGURES


def present(confusion, names):
    """The classes with windows in a confusion matrix (row = true class); every one of the names when
    there is no matrix of their size."""
    if not (isinstance(confusion, list) and len(confusion) == len(names) and all(isinstance(row, list)
                                                                                  for row in confusion)):
        return set(names)
    return {name for name, row in zip(names, confusion) if sum(row) > 0}


def model_scores(run, model):
    """{class: {score: value}} of a run's "base" or "target" model, for the classes present; {} where
    metrics.json has none (a target_only run's base model: null, or false as the engine writes it)."""
    metrics = run["metrics"]
    scores = metrics.get(f"best_{model}_model_target_test_per_class")
    if not isinstance(scores, dict):
        return {}
    seen = present(metrics.get(f"best_{model}_model_target_test_confusion"), run["classes"])
    return {name: {score: as_number(values.get(score)) for score in SCORES}
            for name, values in scores.items() if name in seen and isinstance(values, dict)}


def fold_values(run):
    """{class: {figure: value}} of one run, the classes present in it."""
    base, final = model_scores(run, "base"), model_scores(run, "target")
    values = {}
    for name in run["classes"]:
        if name not in base and name not in final:
            continue
        row = {}
        for score in SCORES:
            before, after = base.get(name, {}).get(score), final.get(name, {}).get(score)
            row.update({f"base_{score}": before, score: after,
                        f"{score}_change": None if before is None or after is None else round(after - before, 12)})
        values[name] = row
    return values


def participant_means(runs):
    """{class: {figure: the mean over the participant's runs (seeds)}}."""
    folds = [fold_values(run) for run in runs]
    names = dict.fromkeys(name for fold in folds for name in fold)
    return {name: {figure: describe(fold[name][figure] for fold in folds if name in fold)[0] for figure in FIGURES}
            for name in names}


def class_names(participants):
    """The class names of a configuration's recognizer runs, in their order, each once."""
    return list(dict.fromkeys(name for runs in participants.values() for run in runs for name in run["classes"] or []))


def config_rows(number, settings, participants, varying):
    """One row per class of a configuration that some participant has: each figure's mean across its
    participants' seed means."""
    means = [participant_means([run for run in runs if run["classes"]]) for runs in participants.values()]
    rows = []
    for name in class_names(participants):
        mine = [participant[name] for participant in means if name in participant]
        if not mine:  # no participant's metrics.json scores the class
            continue
        row = {"config": number, "mode": settings["mode"]}
        row.update({key: settings[key] for key in varying})
        row.update({"class": name, "n": len(mine)})
        for figure in FIGURES:
            mean = describe(participant[figure] for participant in mine)[0]
            row[figure] = round(mean, 12) if figure.endswith("_change") and mean is not None else mean
        rows.append(row)
    return rows


def per_class(summary):
    """The per-class rows of the summary's recognizer configurations; also stored in summary."""
    summary.class_rows = [row for number, settings, participants in summary.groups
                          for row in config_rows(number, settings, participants, summary.varying)]
    return summary.class_rows


def table(rows, varying):
    """(headers, lines) for Markdown, LaTeX and HTML: each score as 'base → final (change)'."""
    keys = ["config", "mode"] + varying + ["class", "n"]
    lines = [[cell(row[key]) for key in keys]
             + [change_text(row[f"base_{score}"], row[score], row[f"{score}_change"]) for score in SCORES]
             for row in rows]
    return keys + ["F1", "precision", "recall"], lines


def note(summary):
    """The per-class table's note; it names the detectors' place when the report has some."""
    detectors = len({row["config"] for row in summary.class_rows}) < len(summary.config_rows)
    return (("Recognizer configurations only (a detector's positive class is in the precision and recall "
             "columns). " if detectors else "")
            + "Each class's F1, precision and recall on the target's test split, base → final (change): means "
            "across participants, each once (the mean over its seeds), over the folds whose test split has the "
            "class.")
