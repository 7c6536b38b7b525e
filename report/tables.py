"""The report's tables: one row per fold (base, personalized and target-only F1, gain, room
captured, best epochs, under-trained phases, the positive class's precision and recall), one per
participant and configuration (each figure's mean and sd over the participant's seeds), and one per
configuration (mean, sd and median of each figure across participants, responders, the Wilcoxon
signed-rank test), every figure across participants taken from the participants' seed means."""
from dataclasses import dataclass, field

from report.runs import BASE_PHASE_SETTINGS, SEED_KEYS, as_number, ignores_base_settings, order_key, warn
from report.stats import describe, wilcoxon

MODE_ORDER = ["target_only", "target_only_fine_tuning", "full_fine_tuning", "base_only"]
FIGURES = [("base_f1", "base F1"), ("personalized_f1", "personalized F1"), ("target_only_f1", "target-only F1"),
           ("gain", "gain"), ("gain_pct", "gain %"), ("room_captured", "room captured"),
           ("best_base_epoch", "best base epoch"), ("best_target_epoch", "best target epoch (of its phase)")]
# The positive class's precision and recall: the base model's, the target phase's model's (personalized,
# or a target_only run's own), and the change from one to the other.
POSITIVE_FIGURES = [("base_precision", "base precision"), ("precision", "precision"),
                    ("precision_change", "precision change"), ("base_recall", "base recall"), ("recall", "recall"),
                    ("recall_change", "recall change")]
ALL_FIGURES = FIGURES + POSITIVE_FIGURES
CHANGES = {"gain", "precision_change", "recall_change"}  # differences, rounded so float noise is no change
STATS = ["mean", "sd", "median"]
TEST_COLUMNS = ["n", "n_paired", "responders", "responder_rate", "wilcoxon_n", "wilcoxon_w", "wilcoxon_p"]


@dataclass
class Summary:
    """The report's rows. varying: the settings that tell configurations apart; seed_keys: the seeds
    that vary between runs of one configuration; groups: (number, settings, {participant: runs})
    of each configuration. comparisons, efficiency and class_rows are filled by report.compare,
    report.efficiency and report.classes when asked for and possible."""
    fold_rows: list
    participant_rows: list
    config_rows: list
    varying: list
    seed_keys: list
    comparisons: list = field(default_factory=list)
    compared: str = None
    efficiency: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    class_rows: list = field(default_factory=list)


def varying_settings(runs):
    """Settings (mode aside) that take more than one value across the runs;
    a target_only run does not count for the base-phase settings it ignores."""
    values = {}
    for run in runs:
        for key, value in run["settings"].items():
            if key != "mode" and not (ignores_base_settings(run["mode"]) and key in BASE_PHASE_SETTINGS):
                values.setdefault(key, set()).add(value)
    return sorted(key for key, seen in values.items() if len(seen) > 1)


def config_sort_key(settings, varying):
    mode = settings["mode"]
    rank = MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)
    return (rank, mode, [order_key(settings[key]) for key in varying])


def config_settings(run):
    """A run's settings without its seeds: what its configuration is."""
    return {key: value for key, value in run["settings"].items() if key not in SEED_KEYS}


def group_configs(runs, varying):
    """[(settings, {participant: [runs, one per seed]})] sorted by mode then varying settings. The
    same settings and seeds twice for one participant: the first run wins, the other is skipped."""
    groups = {}
    for run in runs:
        key = tuple(sorted(config_settings(run).items()))
        seeds = tuple(run["settings"].get(name) for name in SEED_KEYS)
        by_seeds = groups.setdefault(key, {}).setdefault(run["participant"], {})
        first = by_seeds.setdefault(seeds, run)
        if first is not run:
            warn(f"{run['dir']}: skipped, same settings and participant as {first['dir']}")
    configs = [(dict(key), {name: in_seed_order(by_seeds) for name, by_seeds in participants.items()})
               for key, participants in groups.items()]
    return sorted(configs, key=lambda config: config_sort_key(config[0], varying))


def in_seed_order(by_seeds):
    """The runs of {seeds: run}, by seed value."""
    return [by_seeds[seeds] for seeds in sorted(by_seeds, key=lambda seeds: [order_key(s) for s in seeds])]


def target_only_key(participant, settings):
    """What a run and its target_only counterpart must share (seeds are replicates, not shared)."""
    return (participant,) + tuple(sorted((k, v) for k, v in settings.items()
                                         if k != "mode" and k not in BASE_PHASE_SETTINGS and k not in SEED_KEYS))


def target_only_means(configs):
    """{target_only_key: the participant's target_only F1, its mean over seeds}."""
    means = {}
    for settings, participants in configs:
        if settings["mode"] == "target_only":
            for name, runs in participants.items():
                means[target_only_key(name, settings)] = describe(run["personalized_f1"] for run in runs)[0]
    return means


def phase_epoch(metrics):
    """The best target epoch counted within the target phase (metrics.json counts
    it on the global axis, after the base phase's epochs)."""
    epoch = as_number(metrics.get("best_target_epoch"))
    if epoch is None:
        return None
    return int(epoch - (as_number(metrics.get("transition_epoch")) or 0))


def under_trained(metrics):
    """The phases whose best epoch was their last one: early stopping never fired."""
    phases = []
    base_epoch, base_run = as_number(metrics.get("best_base_epoch")), as_number(metrics.get("base_epochs_run"))
    if base_epoch is not None and base_epoch == base_run:
        phases.append("base")
    target_epoch, target_run = phase_epoch(metrics), as_number(metrics.get("target_epochs_run"))
    if target_epoch is not None and target_epoch == target_run:
        phases.append("target")
    return ", ".join(phases) or None


def final_f1(row, stat=""):
    """The F1 of the model a run ends with: the personalized one, the target-only one (a
    target_only run), or the base model (base_only). stat: "_mean" for a configuration row."""
    return next((row[f"{key}{stat}"] for key in ("personalized_f1", "target_only_f1", "base_f1")
                 if row[f"{key}{stat}"] is not None), None)


def fold_row(config, run, varying, target_only_f1s):
    metrics = run["metrics"]
    base, personalized = run["base_f1"], run["personalized_f1"]
    target_only = run["mode"] == "target_only"  # its own model is a target-only one, not a personalized one
    if target_only:
        personalized, own = None, personalized
    gain = None if base is None or personalized is None else round(personalized - base, 12)
    row = {"config": config, "prefix": run["prefix"], "fold": run["fold"], "participant": run["participant"],
           "mode": run["mode"]}
    row.update({key: run["settings"][key] for key in varying})
    row.update({
        "base_f1": base,
        "personalized_f1": personalized,
        "target_only_f1": own if target_only else
        target_only_f1s.get(target_only_key(run["participant"], run["settings"])),
        "gain": gain,
        "gain_pct": None if gain is None or base == 0 else gain / base * 100,
        "room_captured": None if gain is None or base == 1 else gain / (1 - base),
        "best_base_epoch": metrics.get("best_base_epoch"),
        "best_target_epoch": phase_epoch(metrics),
    })
    for score in ("precision", "recall"):
        base_score, final_score = run[f"base_{score}"], run[score]
        row.update({f"base_{score}": base_score, score: final_score,
                    f"{score}_change": None if base_score is None or final_score is None
                    else round(final_score - base_score, 12)})
    row.update({
        "under_trained": under_trained(metrics),
        "code_version": run["code_version"],
        "pack_size": run["pack_size"],  # how it trained: alone (1) or in a pack of N
        "slurm_job": run["slurm_job"],
    })
    return row


def participant_row(config, settings, folds, varying):
    """One participant in one configuration: each figure's mean over the participant's seeds
    (its runs) and their sample sd ({figure}_seed_sd, blank for one seed)."""
    row = {"config": config, "participant": folds[0]["participant"], "mode": settings["mode"]}
    row.update({key: settings[key] for key in varying})
    row["n_seeds"] = len(folds)
    for figure, _ in ALL_FIGURES:
        mean, sd, _ = describe(fold[figure] for fold in folds)
        row[figure] = round(mean, 12) if figure in CHANGES and mean is not None else mean
        row[f"{figure}_seed_sd"] = sd
    return row


def seed_count(rows):
    """n_seeds of a configuration: the participants' one count, or "LOW-HIGH" when they differ."""
    counts = sorted({row["n_seeds"] for row in rows})
    return counts[0] if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def config_row(config, settings, rows, varying):
    """One configuration from its participant rows (seed means): each participant counts once."""
    gains = [row["gain"] for row in rows if row["gain"] is not None]
    row = {"config": config, "mode": settings["mode"]}
    row.update({key: settings[key] for key in varying})
    responders = sum(gain > 0 for gain in gains)
    w, p, n_test = wilcoxon(gains) if gains else (None, None, None)
    row.update({"n": len(rows), "n_paired": len(gains),
                "responders": responders if gains else None,
                "responder_rate": responders / len(gains) if gains else None,
                "wilcoxon_n": n_test, "wilcoxon_w": w, "wilcoxon_p": p, "n_seeds": seed_count(rows)})
    for figure, _ in ALL_FIGURES:
        values = describe(participant[figure] for participant in rows)
        row.update({f"{figure}_{stat}": value for stat, value in zip(STATS, values)})
    return row


def provenance_conflicts(config, runs):
    """Lines naming the folds of one configuration that ran other code, or read other bytes
    of the same data file, than the rest (from each fold's provenance.json)."""
    def folds(group):
        return ", ".join(str(run["dir"]) for run in group)
    lines = []
    versions = {}
    for run in runs:
        versions.setdefault(run["code_version"] or "unknown", []).append(run)
    if len(versions) > 1:
        lines.append(f"configuration {config}: its folds come from {len(versions)} code versions: "
                     + "; ".join(f"{code}: {folds(group)}" for code, group in sorted(versions.items())))
    files = {}
    for run in runs:
        for name, digest in (run["data_fingerprint"] or {}).items():
            files.setdefault(name, {}).setdefault(digest, []).append(run)
    for name, digests in sorted(files.items()):
        if len(digests) > 1:
            lines.append(f"configuration {config}: data file {name} differs between its folds: "
                         + "; ".join(f"{digest[:12]}: {folds(group)}" for digest, group in sorted(digests.items())))
    return lines


def summarize_all(runs):
    """The Summary of loaded runs: fold, participant and configuration rows."""
    varying_all = varying_settings(runs)
    varying = [key for key in varying_all if key not in SEED_KEYS]
    seed_keys = [key for key in varying_all if key in SEED_KEYS]
    configs = group_configs(runs, varying)
    target_only_f1s = target_only_means(configs)
    summary = Summary([], [], [], varying, seed_keys)
    for number, (settings, participants) in enumerate(configs, 1):
        summary.groups.append((number, settings, participants))
        for line in provenance_conflicts(number, [run for runs in participants.values() for run in runs]):
            warn(line)
        rows = []
        for runs_of_one in participants.values():
            folds = [fold_row(number, run, varying + seed_keys, target_only_f1s) for run in runs_of_one]
            summary.fold_rows += folds
            rows.append(participant_row(number, settings, folds, varying))
        summary.participant_rows += rows
        summary.config_rows.append(config_row(number, settings, rows, varying))
        if isinstance(summary.config_rows[-1]["n_seeds"], str):
            warn(f"configuration {number}: unequal seed counts across participants ("
                 + ", ".join(f"{row['participant']}: {row['n_seeds']}" for row in rows)
                 + "); each participant counts once, as the mean over its seeds")
    return summary


def summarize(runs):
    """(per-fold rows, per-configuration rows, varying settings) of loaded runs."""
    summary = summarize_all(runs)
    return summary.fold_rows, summary.config_rows, summary.varying
