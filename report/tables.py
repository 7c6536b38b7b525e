"""The report's tables: one row per fold (base, personalized and target-only F1, gain, room
captured, best epochs, under-trained phases) and one per configuration (mean, sd and median of
each figure, responders, the Wilcoxon signed-rank test across participants)."""
from report.runs import BASE_PHASE_SETTINGS, as_number, ignores_base_settings, order_key, warn
from report.stats import describe, wilcoxon

MODE_ORDER = ["target_only", "target_only_fine_tuning", "full_fine_tuning", "base_only"]
FIGURES = [("base_f1", "base F1"), ("personalized_f1", "personalized F1"), ("target_only_f1", "target-only F1"),
           ("gain", "gain"), ("gain_pct", "gain %"), ("room_captured", "room captured"),
           ("best_base_epoch", "best base epoch"), ("best_target_epoch", "best target epoch (of its phase)")]
STATS = ["mean", "sd", "median"]
TEST_COLUMNS = ["n", "n_paired", "responders", "responder_rate", "wilcoxon_n", "wilcoxon_w", "wilcoxon_p"]


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


def group_configs(runs, varying):
    """[(settings, runs)] sorted by mode then varying settings; one run per participant."""
    groups = {}
    for run in runs:
        key = tuple(sorted(run["settings"].items()))
        group = groups.setdefault(key, {})
        first = group.setdefault(run["participant"], run)
        if first is not run:
            warn(f"{run['dir']}: skipped, same settings and participant as {first['dir']}")
    configs = [(dict(key), list(group.values())) for key, group in groups.items()]
    return sorted(configs, key=lambda config: config_sort_key(config[0], varying))


def target_only_key(participant, settings):
    """What a run and its target_only counterpart must share."""
    return (participant,) + tuple(sorted((k, v) for k, v in settings.items()
                                         if k != "mode" and k not in BASE_PHASE_SETTINGS))


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
        "under_trained": under_trained(metrics),
        "code_version": run["code_version"],
        "pack_size": run["pack_size"],  # how it trained: alone (1) or in a pack of N
        "slurm_job": run["slurm_job"],
    })
    return row


def config_row(config, settings, rows, varying):
    gains = [row["gain"] for row in rows if row["gain"] is not None]
    row = {"config": config, "mode": settings["mode"]}
    row.update({key: settings[key] for key in varying})
    responders = sum(gain > 0 for gain in gains)
    w, p, n_test = wilcoxon(gains) if gains else (None, None, None)
    row.update({"n": len(rows), "n_paired": len(gains),
                "responders": responders if gains else None,
                "responder_rate": responders / len(gains) if gains else None,
                "wilcoxon_n": n_test, "wilcoxon_w": w, "wilcoxon_p": p})
    for figure, _ in FIGURES:
        values = describe(fold[figure] for fold in rows)
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


def summarize(runs):
    """(per-fold rows, per-configuration rows, varying settings) of loaded runs."""
    varying = varying_settings(runs)
    configs = group_configs(runs, varying)
    target_only_f1s = {}
    for run in runs:
        if run["mode"] == "target_only":
            key = target_only_key(run["participant"], run["settings"])
            target_only_f1s.setdefault(key, run["personalized_f1"])
    fold_rows, config_rows = [], []
    for number, (settings, config_runs) in enumerate(configs, 1):
        for line in provenance_conflicts(number, config_runs):
            warn(line)
        rows = [fold_row(number, run, varying, target_only_f1s) for run in config_runs]
        fold_rows += rows
        config_rows.append(config_row(number, settings, rows, varying))
    return fold_rows, config_rows, varying
