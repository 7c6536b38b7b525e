"""One leave-one-participant-out fold, end to end.

Base phase (train on the other participants' train+val, early-stop on their
test split), then target phase (fine-tune, early-stop on the target's val
split), both on one epoch axis. The target's test split is read once, for the
final scores. Outputs go to a hidden sibling folder that is renamed into place
at the end, so a result folder is whole or absent.
"""
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from composed_loader import ComposedBatchDataLoader, TensorBatchLoader
from engine import base_cache, markers, provenance, user_model
from engine.augment import make_augmenter
from engine.data import CLASSES_FILE, check_participants, load_participants, shape_of
from engine.device import fast_kernels, graphs_wanted, place, resolve_device
from engine.fileio import ConfigError, publish_folder, staged_folder
from engine.flags import check_args, share_count, target_windows_per_batch
from engine.fold_plan import plan_fold
from engine.metrics import evaluate, positive_class_scores
from engine.models import build, head_names, set_dropout_generator
from engine.modes import mode_of
from engine.phase import CURVES, phase_generators, train_phase
from engine.results import replace_refusal
from engine.runlog import file_handler, log


def concat(pairs):
    return torch.cat([X for X, _ in pairs]), torch.cat([y for _, y in pairs])


def subsample(X, y, pct, seed, count_rule="round"):
    """A seeded random share of the windows (at least one), kept in their original order."""
    if pct >= 1:
        return X, y
    keep = max(1, share_count(pct, len(X), count_rule))
    index = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:keep].sort().values
    return X[index], y[index]


def train_base_model(args, plan, base_data, shape, device):
    """Base phase: train on the base participants' train+val, early-stop on their test."""
    X_train, y_train = concat([base_data[p][s] for p in base_data for s in ("train", "val")])
    # --base_val_pct is part of the base key.
    X_stop, y_stop = subsample(*concat([base_data[p]["test"] for p in base_data]), args.base_val_pct,
                               plan.seeds.base_stop)
    X_train, y_train, X_stop, y_stop = place([X_train, y_train, X_stop, y_stop], device)
    loader_gen, augment_gen, dropout_gen = phase_generators(plan.seeds.base, device)
    model = phase_model(args, shape, device, dropout_gen)
    loader = TensorBatchLoader(X_train, y_train, args.batch_size, shuffle=True, generator=loader_gen)
    log.info(f"base phase: {len(X_train)} windows from {', '.join(base_data)}, "
             f"early stopping on their test split ({len(X_stop)} windows)")
    return train_phase("base", model, loader, (X_stop, y_stop), args, args.early_stopping_patience,
                       device, make_augmenter(args, augment_gen), first_epoch=1, who=plan.who)


def phase_model(args, shape, device, dropout_generator):
    """A phase's fresh model on the device, its weights drawn from torch's generator (seeded by
    phase_generators just before), its dropout masks from the phase's own generator."""
    model = build(args, shape.channels, fast_kernels(args, device), shape.n_classes).to(device)
    set_dropout_generator(model, dropout_generator)
    return model


def train_only_head(model):
    """--finetune_layers head: every parameter but the head's stops taking gradients (and so stays
    the base model's, bit for bit); returns the names of the head's."""
    names = head_names(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
    return names


def target_loader(args, base_train, target_train, generator):
    """Fine-tuning batches: target only, plain mixing, or exact composition."""
    if not mode_of(args.mode).mixed_batches:
        return TensorBatchLoader(*target_train, args.batch_size, shuffle=True, generator=generator)
    if getattr(args, "target_batch_pct", None) is not None:
        return ComposedBatchDataLoader(base_train, target_train, args.batch_size, args.target_batch_pct,
                                       shuffle=True, generator=generator, epoch_rule=args.epoch_rule,
                                       target_count=args.target_count)
    X = torch.cat([base_train[0], target_train[0]])
    y = torch.cat([base_train[1], target_train[1]])
    return TensorBatchLoader(X, y, args.batch_size, shuffle=True, generator=generator)


def curve_axis(base, target):
    """The eight curves on one epoch axis, None where a curve does not apply."""
    n_base = base["epochs_run"] if base else 0
    n_target = target["epochs_run"] if target else 0
    losses = {"epoch": list(range(1, n_base + n_target + 1)),
              "transition_epoch": n_base if base else None,
              "best_base_epoch": base["best_epoch"] if base else None,
              "best_target_epoch": target["best_epoch"] if target else None}
    for name in CURVES:
        losses[f"base_{name}"] = (base["curves"][name] if base else []) + [None] * n_target
        losses[f"target_{name}"] = [None] * n_base + (target["curves"][name] if target else [])
    return losses


def fold_metrics(args, fold, target_name, base, target, scores, base_entry):
    """metrics.json, with the original pipeline's key meanings.

    best_{phase}_val_loss / _f1: the best validation loss and the best validation
    F1 over the phase's epochs, each with its _epoch; best_{phase}_epoch is the
    kept checkpoint's epoch (the best loss); {phase}_val_f1_at_best_loss is the F1
    of that checkpoint. scores: (loss, F1) pairs, None where a model is absent;
    best_base_model_* and best_target_model_* are the kept checkpoints.
    """
    metrics = {"mode": args.mode, "fold": fold, "target_participant": target_name}
    for name, phase in (("base", base), ("target", target)):
        metrics.update({
            f"best_{name}_epoch": phase and phase["best_epoch"],
            f"best_{name}_val_loss": phase and phase["best_val_loss"],
            f"best_{name}_val_loss_epoch": phase and phase.get("best_val_loss_epoch", phase["best_epoch"]),
            f"best_{name}_val_f1": phase and phase["best_val_f1"],
            f"best_{name}_val_f1_epoch": phase and phase["best_val_f1_epoch"],
            f"{name}_val_f1_at_best_loss": phase and phase["val_f1_at_best_loss"],
        })
    metrics["transition_epoch"] = base and base["epochs_run"]
    for model_and_split, score in scores.items():
        metrics[f"best_{model_and_split}_loss"] = score and score[0]
        metrics[f"best_{model_and_split}_f1"] = score and score[1]
    metrics.update({
        "base_epochs_run": base and base["epochs_run"],
        "target_epochs_run": target and target["epochs_run"],
        "base_model_reused": bool(base_entry and base_entry.reused),
        "base_key": base_entry.key if base_entry else None,
        "train_windows_per_s": (target or base)["windows_per_s"],
    })
    return metrics


def obtain_base(args, plan, base_data, shape, device, fingerprint):
    """The fold's base model: from the cache when the CLI has one, else trained here.
    fingerprint: the base participants' data files (base_cache.data_fingerprint)."""
    base_names = plan.base_names

    def train():
        started = provenance.now()
        result = train_base_model(args, plan, base_data, shape, device)
        return dict(result, provenance=dict(provenance.record(device, fingerprint, started, result),
                                            **user_model.provenance_of(args)))
    if not getattr(args, "base_cache_dir", None) or args.no_base_cache:
        return train(), None
    key = base_cache.base_key(args, base_names)
    entry = base_cache.get_or_train(args.base_cache_dir, key, fingerprint,
                                    base_cache.key_settings(args, base_names), train)
    return entry.result, entry


def check_window(args, shape):
    """Before any training (and before the base cache's lock): a model that cannot take these
    windows (a built-in one's pooling; a lab's own model's output is checked on two windows), and
    loss weights that do not fit the classes. Returns the model, built on the CPU."""
    check_weights(args, shape)
    model = build(args, shape.channels, n_classes=shape.n_classes)
    if user_model.is_spec(args.model):
        user_model.check_output(model, args.model, shape.channels, shape.window, shape.n_classes)
        return model
    need = model.min_window()
    if shape.window < need:
        raise ConfigError(f"{args.data_path}: windows of {shape.window} samples are too short for --model "
                          f"{args.model}, whose pooling needs at least {need}")
    return model


def check_weights(args, shape):
    """--pos_weight is a detector's, --class_weights a recognizer's, one number a class."""
    if getattr(args, "pos_weight", None) is not None and shape.classes:
        raise ConfigError(f"--pos_weight weighs a detector's positive class; {args.data_path} has "
                          f"{shape.n_classes} classes: give --class_weights, one weight a class")
    weights = getattr(args, "class_weights", None)
    if weights is not None and not shape.classes:
        raise ConfigError(f"--class_weights weighs a recognizer's classes; {args.data_path} holds a detector's two "
                          f"(0/1): give --pos_weight for its positive class")
    if weights is not None and len(weights) != shape.n_classes:
        raise ConfigError(f"--class_weights gives {len(weights)} weights; {args.data_path} has {shape.n_classes} "
                          f"classes ({', '.join(shape.classes)})")


def check_composition(args, n_target, n_base):
    """Before any training: can every fine-tuning batch hold its exact target share?"""
    pct = getattr(args, "target_batch_pct", None)
    if pct is None:
        return
    k = target_windows_per_batch(args)
    if n_target < k:
        raise ConfigError(f"--target_batch_pct {pct} puts {k} target windows in every batch, but "
                          f"--target_data_pct {args.target_data_pct} leaves {n_target} target train windows")
    if n_base < args.batch_size - k:
        raise ConfigError(f"--target_batch_pct {pct} puts {args.batch_size - k} base windows in every batch, "
                          f"but the base participants have {n_base} train+val windows")


def refuse_existing(final, args, appeared=False):
    """A result folder that exists and may not be replaced ends the run: RESULT_EXISTS for the
    runner (it does not retry this), then the one-line error. appeared: asked at publishing, so
    another process published it while this one trained."""
    refusal = replace_refusal(final, args.overwrite, getattr(args, "run_token", None))
    if refusal:
        markers.say(markers.RESULT_EXISTS, final)
        raise ConfigError(f"{final}: result folder appeared during the run; kept the existing one" if appeared
                          else refusal)


def run_fold(args):
    """Run one fold end to end; returns the published result folder (None for base_only)."""
    started, started_at = time.perf_counter(), provenance.now()
    check_args(args)
    device = resolve_device(args.device)
    graphs_wanted(getattr(args, "cuda_graphs", "auto"), device)  # --cuda_graphs on without CUDA: refused now
    participants = check_participants(args.data_path, args.participants)
    plan = plan_fold(args, participants)
    args.fold = plan.fold  # a fold named by its participant is recorded as its index, as its folder says
    target_name, base_names = plan.target, plan.base_names
    if plan.mode.target_phase:
        refuse_existing(plan.final, args)
    data = load_participants(args.data_path, [target_name] + base_names, args.window_size)
    fingerprint = base_cache.data_fingerprint(args.data_path, [target_name] + base_names)
    shape = shape_of(args.data_path, data)
    check_window(args, shape)
    base_data = {p: data[p] for p in base_names}
    target_train = subsample(*data[target_name]["train"], args.target_data_pct, plan.seeds.target_data,
                             args.target_count)
    target_val = subsample(*data[target_name]["val"], args.target_val_pct, plan.seeds.target_val)
    check_composition(args, len(target_train[0]), sum(len(base_data[p][s][0]) for p in base_names
                                                       for s in ("train", "val")))

    base, base_entry = None, None
    if base_names:
        base_files = {name: digest for name, digest in fingerprint.items()  # as pack.py's fingerprint(base names)
                      if name.rsplit("_", 1)[0] in base_names or name == CLASSES_FILE}
        base, base_entry = obtain_base(args, plan, base_data, shape, device, base_files)
    if not plan.mode.target_phase:
        markers.say(markers.BASE_KEY, base_entry.key)
        markers.say(markers.BASE_MODEL, base_entry.path)
        return None

    # One decision for every tensor of the phase: the composed loader needs them on one device.
    base_train = concat([base_data[p][s] for p in base_names for s in ("train", "val")]) \
        if plan.mode.mixed_batches else ()
    tensors = place([*target_train, *target_val, *base_train], device)
    target_train, target_val, base_train = tuple(tensors[:2]), tuple(tensors[2:4]), tuple(tensors[4:]) or None
    model, target = train_target(args, plan, base, shape, device, (base_train, target_train, target_val))

    # The target's test split is read here, once, for the final scores only.
    finish_fold(args, model, device, plan, participants, shape, target_val, data[target_name]["test"], base,
                base_entry, target, started, fingerprint, started_at)
    return plan.final


def train_target(args, plan, base, shape, device, windows):
    """The target phase, from the base model where the mode starts there: (the model, the phase's
    result). windows: (base train, target train, target val), on the device."""
    base_train, target_train, target_val = windows
    # Seeded apart: the target phase is the same whether the base was trained or reused.
    loader_gen, augment_gen, dropout_gen = phase_generators(plan.seeds.target, device)
    model = phase_model(args, shape, device, dropout_gen)
    if plan.mode.from_base:
        model.load_state_dict(base["state"])
    if args.finetune_layers == "head":
        log.info(f"target phase trains the head only: {', '.join(train_only_head(model))}")
    loader = target_loader(args, base_train, target_train, loader_gen)
    log.info(f"target phase ({args.mode}): {len(target_train[0])} target train windows, "
             f"{len(loader)} batches per epoch, early stopping on {plan.target}'s val split "
             f"({len(target_val[0])} windows)")
    first_epoch = (base["epochs_run"] if base else 0) + 1
    return model, train_phase("target", model, loader, target_val, args, args.early_stopping_patience_target,
                              device, make_augmenter(args, augment_gen), first_epoch, plan.who)


def finish_fold(args, model, device, plan, participants, shape, target_val, target_test, base, base_entry, target,
                started, fingerprint, started_at, extra_hyper=None):
    """Score the kept models on the target's test split and publish the result folder
    (engine.pack calls it too, with the pack's size and id in extra_hyper).
    started: perf_counter at the start; fingerprint, started_at: for provenance.json."""
    target_name = plan.target
    base_val, base_test = None, None
    if base is not None:
        model.load_state_dict(base["state"])
        base_val = evaluate(model, *target_val, device)
        base_test = evaluate(model, *target_test, device)
    model.load_state_dict(target["state"])
    personal_test = evaluate(model, *target_test, device)

    metrics = fold_metrics(args, args.fold, target_name, base, target,
                           {"base_model_target_val": base_val, "base_model_target_test": base_test,
                            "target_model_target_test": personal_test}, base_entry)
    metrics.update(positive_class_scores(model, {"best_base_model_target_test": base and base["state"],
                                                 "best_target_model_target_test": target["state"]},
                                         *target_test, device, shape.classes))
    metrics["total_time_s"] = time.perf_counter() - started
    metrics["peak_device_memory_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                                        else None)  # the process's peak so far: a pack's, for its members
    hyper = dict(vars(args), participants=participants, target_participant=target_name,
                 base_participants=plan.base_names, n_channels=shape.channels, window_size=shape.window,
                 classes=shape.classes and list(shape.classes),
                 device=str(device), script=Path(sys.argv[0]).name, cuda_graphs_used=target["cuda_graphs"],
                 **(extra_hyper or {}))
    gain = f" (gain {personal_test[1] - base_test[1]:+.3f})" if base_test else ""
    log.info(f"base model on {target_name}'s test: " + (f"f1 {base_test[1]:.3f}" if base_test else "none")
             + f"; personalized: f1 {personal_test[1]:.3f}{gain}")
    files = {"hyperparameters.json": hyper, "metrics.json": metrics, "losses.json": curve_axis(base, target),
             # What produced the base model it started from too: trained here or by the run that cached it.
             "provenance.json": dict(provenance.record(device, fingerprint, started_at, target),
                                     **user_model.provenance_of(args), base_model=base and base.get("provenance"))}
    publish(plan.final, files, target["state"], args)


def publish(final, json_files, state, args):
    """Write everything into a hidden sibling, then rename it into place."""
    import plotting  # matplotlib is only needed at the very end
    with staged_folder(final) as tmp:
        for name, content in json_files.items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        torch.save({k: v.cpu() for k, v in state.items()}, tmp / "best_target_model.pt")
        plotting.plot_training_curves(json_files["losses.json"], tmp)
        confusion = json_files["metrics.json"].get("best_target_model_target_test_confusion")
        if confusion:  # a recognizer's
            plotting.plot_confusion(confusion, json_files["hyperparameters.json"]["classes"], tmp)
        handler = file_handler()
        if handler is not None:
            handler.flush()
            shutil.copyfile(handler.baseFilename, tmp / "train.log")
        refuse_existing(final, args, appeared=True)
        publish_folder(tmp, final, replace=True)
