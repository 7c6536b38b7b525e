"""Issue 37, the lab's protocol: its configurable `test` model, early stopping on F1, fine-tuning seeds,
class weights, no epoch cap, folds named by participant, your own model, head-only fine-tuning, and
their final grid: each point of the issue's "How it will be checked", with real torch on tiny shapes.

Tiny data on the CPU, one torch thread (conftest; the module-scoped runs set it themselves). The runs
shared by several tests are module fixtures, and the curves' plots are not drawn (the folders compared
lack them alike): what is compared is metrics.json, losses.json and best_target_model.pt.
"""
import contextlib
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import generate_jobs
import pack_train
import plotting
import run_distributed_training as rdt
from conftest import write_json
from engine import base_cache
from engine import cli as engine_cli
from engine.fileio import ConfigError
from engine.flags import check_args, job_argv
from engine.models import build, head_names, set_dropout_generator
from engine.phase import PhaseTracker
from runner import grid
from test_fast_kernels import both_ways
from test_pack import compare, data, noisy, read, shared  # noqa: F401 (data, noisy: fixtures)
from tiny_data import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
OCT1 = str(ROOT / "oct1_train.py")
# The lab's model family, small: 4 channels, dilation on, dropout 0.5 (the manuscript's is 64 channels).
LAB = {"base_channels": 4, "use_dilation": True, "dropout": 0.5}
HEAD = {"head.weight", "head.bias"}  # the built-in models' final Linear


@pytest.fixture(scope="module", autouse=True)
def no_plots():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plotting, "plot_training_curves", lambda *args: None)
        yield


@contextlib.contextmanager
def one_thread():
    """conftest's one_thread, for the module fixtures that train before it applies."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parse(*argv):
    return engine_cli.build_parser(True).parse_args([str(a) for a in argv])


def n_parameters(model):
    return sum(p.numel() for p in model.parameters())


def solo(job):
    """oct1_train.py in-process, the job's own prefix; the exit status."""
    with one_thread():
        return engine_cli.main(job_argv(job), enhanced=True)


def train_pack(jobs, path):
    """pack_train.py in-process on these jobs (each with its own prefix): (exit status, stdout)."""
    path.write_text(json.dumps(jobs))
    out = io.StringIO()
    with one_thread(), contextlib.redirect_stdout(out):
        status = pack_train.main([str(path)])
    return status, out.getvalue()


def folder(job):
    """A job's result folder (its fold given as an index)."""
    return Path(job["experiments_dir"], job["prefix"], f"fold{job['fold']}_{'abcd'[job['fold']]}")


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def entries(cache):
    return sorted(p.name for p in Path(cache).iterdir() if p.is_dir()) if Path(cache).is_dir() else []


def base_model(cache, metrics):
    """The weights of the base model a fold started from: its cache entry's model.pt."""
    return weights(Path(cache, metrics["base_key"], "model.pt"))


def identical(solo_folder, pack_folder):
    """Bit for bit: the same files, hyperparameters (where a pack member may differ aside), metrics
    (timing aside) and curves, and the same best_target_model.pt tensors."""
    assert compare(solo_folder, pack_folder) == 0.0
    ours, theirs = weights(solo_folder / "best_target_model.pt"), weights(pack_folder / "best_target_model.pt")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{pack_folder}: {name}"


def base_part(results):
    """What a fold's base phase wrote: metrics and curves of the base model."""
    metrics, losses = results["metrics.json"], results["losses.json"]
    return ({k: v for k, v in metrics.items() if "base" in k and k != "base_model_reused"},
            {k: v for k, v in losses.items() if k.startswith("base_") or k == "transition_epoch"})


def target_part(results):
    return {k: v for k, v in results["losses.json"].items() if k.startswith("target_")}


def one_line_error(capsys, *needles):
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------- 1. the model family

def test_the_manuscript_model_has_50753_parameters_and_the_default_test_969():
    manuscript = build(parse("--preset", "manuscript"), 6)
    assert n_parameters(manuscript) == 50_753
    assert n_parameters(build(parse(), 6)) == 969
    # Its blocks as the issue says: C = 64, 64, 64, 128 with dilations 1, 2, 4, 8 that keep the length.
    convs = [block[0] for block in manuscript.features]
    assert [c.out_channels for c in convs] == [64, 64, 64, 128]
    assert [c.dilation[0] for c in convs] == [1, 2, 4, 8] and [c.padding[0] for c in convs] == [1, 2, 4, 8]
    assert manuscript.dropout.p == 0.5
    # The preset with every flag spelled out builds the same model.
    spelled = parse("--base_channels", 64, "--num_blocks", 4, "--use_dilation", "--dropout", 0.5)
    assert n_parameters(build(spelled, 6)) == 50_753


def test_a_residual_variant_builds_and_its_fast_kernels_match_the_reference():
    plain = build(parse("--base_channels", 4, "--num_blocks", 5, "--use_dilation"), 6)
    model = build(parse("--base_channels", 4, "--num_blocks", 5, "--use_dilation", "--use_residual"), 6)
    # 1x1 convolutions where the channels change only: 6 -> 4 in the first block, 4 -> 8 in the last.
    assert n_parameters(model) == n_parameters(plain) + (6 * 4 + 4) + (4 * 8 + 8)
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(3, 6, 67)  # odd length: the floor pools drop a sample
    results = both_ways(model, x)
    (reference, ref_grads), (out, grads) = results
    assert (out - reference).abs().max() <= 1e-5
    for ref, grad in zip(ref_grads, grads):
        assert torch.allclose(grad, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- 2. the base-model key

NEW_FLAGS = ("base_channels", "num_blocks", "use_dilation", "use_residual", "dropout", "model_args",
             "early_stopping_metric", "seed_finetune", "pos_weight", "finetune_layers")


def key(*argv):
    return base_cache.base_key(parse(*argv), ["a", "c", "d"])


def test_the_base_key_holds_what_changes_the_base_model_and_nothing_else():
    plain = key()
    # Today's keys stay: at their defaults the new flags are not in the key at all.
    assert not set(base_cache.key_settings(parse(), ["a"])) & set(NEW_FLAGS)
    at_defaults = ["--base_channels", 8, "--num_blocks", 4, "--dropout", 0, "--early_stopping_metric", "loss",
                   "--finetune_layers", "all"]
    assert key(*at_defaults) == plain
    # Target-phase flags: fine-tuning seeds, class weights and head-only share one base model.
    for flags in (["--seed_finetune", 7], ["--pos_weight", 3], ["--finetune_layers", "head"]):
        assert key(*flags) == plain, flags
    assert key("--preset", "manuscript", "--seed_finetune", 2, "--pos_weight", 15) == key("--preset", "manuscript")
    # The architecture and the early-stopping metric of the base phase each make another base model.
    changed = [key(*flags) for flags in (["--base_channels", 16], ["--dropout", 0.5], ["--use_dilation"],
                                         ["--num_blocks", 5], ["--use_residual"], ["--early_stopping_metric", "f1"])]
    assert plain not in changed and len(set(changed)) == len(changed)


def test_medium_whose_dropout_masks_now_come_from_the_phase_generator_has_keys_of_its_own():
    # Its fixed dropout drew from torch's global generator before: a base model cached then is another one.
    assert base_cache.key_settings(parse("--model", "medium"), ["a"])["dropout_masks"] == "phase generator"
    assert "dropout_masks" not in base_cache.key_settings(parse(), ["a"])  # test's keys stay


def test_the_manuscript_preset_shapes_test_only_and_runs_the_protocol_with_another_model():
    lab = parse("--preset", "manuscript", "--model", "medium")
    assert (lab.base_channels, lab.use_dilation, lab.dropout) == (8, False, 0.0)  # medium's own architecture
    assert (lab.batch_size, lab.max_epochs, lab.early_stopping_metric, lab.lr) == (32, "none", "f1", 3e-4)
    check_args(lab)  # not refused for flags the user never gave
    with pytest.raises(ConfigError, match="--dropout shape --model test only"):
        check_args(parse("--preset", "manuscript", "--model", "medium", "--dropout", "0.3"))


# ---------------------------------------------------------------- 3. early stopping on F1

def feed(tracker, val_f1, val_loss):
    """Epochs with these validation scores: (what end_epoch returned each time, the epochs whose state was taken)."""
    stops, taken = [], []
    for f1, loss in zip(val_f1, val_loss):
        epoch = tracker.first_epoch + tracker.epochs_run
        stops.append(tracker.end_epoch((0.5, loss, 0.5, f1), 8, 0.1, lambda: taken.append(epoch) or {"epoch": epoch}))
    return stops, taken


def test_f1_early_stopping_keeps_the_first_epoch_of_the_highest_f1():
    losses = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]  # ever lower: the loss would keep the last epoch
    tracker = PhaseTracker("fold 0", "target", first_epoch=4, patience=3, metric="f1")
    stops, taken = feed(tracker, [0.2, 0.5, 0.5, 0.4, 0.5], losses)
    # Epoch 5 reaches 0.5 first; the ties at 6 and 8 move nothing; three epochs without a higher F1 stop it.
    assert stops == [False, False, False, False, True]
    assert taken == [4, 5] and tracker.best["state"] == {"epoch": 5}
    result = tracker.result(False, False)
    assert (result["best_epoch"], result["best_val_f1"], result["best_val_f1_epoch"]) == (5, 0.5, 5)
    assert (result["best_val_loss"], result["best_val_loss_epoch"]) == (0.5, 8)  # recorded too
    # A strictly higher F1 starts the count again.
    tracker = PhaseTracker("fold 0", "target", first_epoch=1, patience=2, metric="f1")
    assert feed(tracker, [0.5, 0.5, 0.6, 0.6, 0.6], losses) == ([False, False, False, False, True], [1, 3])
    # The same scores kept by loss: the lowest, the last.
    tracker = PhaseTracker("fold 0", "target", first_epoch=1, patience=3, metric="loss")
    feed(tracker, [0.2, 0.5, 0.5, 0.4, 0.5], losses)
    assert tracker.best["epoch"] == 5 and tracker.stale == 0


def first_best(values):
    """The index of the first highest value of a curve (its None entries skipped)."""
    real = [(v, -i) for i, v in enumerate(values) if v is not None]
    return -max(real)[1]


def test_a_fold_early_stopping_on_f1_keeps_its_best_f1_epoch_in_both_phases(data, tmp_path):
    # On this data the F1 of both phases reaches its highest value and stays there (ties), while the
    # loss goes on falling: kept by loss, the best epochs would be later ones.
    job = dict(shared(data, tmp_path / "exp", tmp_path / "cache", epochs=8), fold=1, prefix="f1", lr=0.003,
               base_channels=4, early_stopping_metric="f1", early_stopping_patience=3,
               early_stopping_patience_target=3)
    assert solo(job) == 0
    results = read(folder(job))
    metrics, losses = results["metrics.json"], results["losses.json"]
    assert metrics["best_target_epoch"] == metrics["best_target_val_f1_epoch"]
    assert metrics["best_base_epoch"] == metrics["best_base_val_f1_epoch"]
    epochs = losses["epoch"]
    assert epochs[first_best(losses["target_val_f1"])] == metrics["best_target_epoch"]
    assert epochs[first_best(losses["base_val_f1"])] == metrics["best_base_epoch"]
    # Each phase that stopped before the cap did so 3 epochs (its patience) after its kept epoch.
    base_run, target_run = metrics["base_epochs_run"], metrics["target_epochs_run"]
    assert base_run == 8 or metrics["best_base_epoch"] + 3 == base_run
    assert target_run == 8 or metrics["best_target_epoch"] + 3 == metrics["transition_epoch"] + target_run


# ---------------------------------------------------------------- 4 and 5. seeds and packs of dropout members

def test_dropout_draws_its_masks_from_the_phase_generator_only():
    model = build(parse(*[f"--{k}" if v is True else f"--{k}={v}" for k, v in LAB.items()]), 3).train()
    x = torch.randn(8, 3, 32)

    def forward(seed):
        set_dropout_generator(model, torch.Generator().manual_seed(seed))
        return model(x).detach(), model(x).detach()

    rng = torch.get_rng_state()
    first, second = forward(1)
    assert torch.equal(torch.get_rng_state(), rng)  # torch's global generator untouched
    assert not torch.equal(first, second)  # the masks do drop features
    assert all(torch.equal(a, b) for a, b in zip(forward(1), (first, second)))  # a run repeats its masks
    assert not torch.equal(forward(2)[0], first)
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.fixture(scope="module")
def lab_runs(data, tmp_path_factory):
    """Solo runs of the lab's small model with dropout, and the same jobs as one pack.

    Three fine-tuning seeds of fold 1 share one cache (its only entry); fold 2 (with --pos_weight 3)
    and fold 3 (target_only) have another. The pack holds all five, fold 2 named by its participant."""
    root = tmp_path_factory.mktemp("lab")
    exp = root / "exp"
    common = dict(shared(data, exp, root / "seeds_cache"), **LAB)
    seeds = [dict(common, fold=1, mode="target_only_fine_tuning", seed_finetune=s, prefix=f"solo/s{s}")
             for s in (1, 2, 3)]
    others = [dict(common, fold=2, seed=5, pos_weight=3.0, prefix="solo/weighted", base_cache_dir=str(root / "cache")),
              dict(common, fold=3, seed=6, mode="target_only", target_data_pct=0.5, seed_finetune=9,
                   prefix="solo/target_only", base_cache_dir=str(root / "cache"))]
    outs = []
    for job in seeds + others:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert solo(job) == 0
        outs.append(out.getvalue())
    seed_entries = entries(root / "seeds_cache")
    members = [dict(job, prefix=job["prefix"].replace("solo/", "pack/"), base_cache_dir=str(root / "pack_cache"))
               for job in seeds + others]
    members[3]["fold"] = "c"  # a fold named by its participant
    status, pack_out = train_pack(members, root / "jobs.json")
    assert status == 0, pack_out
    members[3]["fold"] = 2
    return {"seeds": seeds, "others": others, "members": members, "seed_entries": seed_entries, "outs": outs,
            "pack_out": pack_out, "caches": [entries(root / "seeds_cache"), entries(root / "cache"),
                                              entries(root / "pack_cache")]}


def test_three_fine_tuning_seeds_train_the_base_model_once(lab_runs):
    seeds = lab_runs["seeds"]
    assert len(lab_runs["seed_entries"]) == 1
    assert sum(out.count("BASE_TRAINED") for out in lab_runs["outs"][:3]) == 1
    results = [read(folder(job)) for job in seeds]
    keys = {r["metrics.json"]["base_key"] for r in results}
    assert keys == set(lab_runs["seed_entries"])
    assert [r["metrics.json"]["base_model_reused"] for r in results] == [False, True, True]
    assert [r["hyperparameters.json"]["seed_finetune"] for r in results] == [1, 2, 3]
    # The base part is the same model's; the target phases differ, seed by seed.
    assert base_part(results[0]) == base_part(results[1]) == base_part(results[2])
    targets = [target_part(r) for r in results]
    assert targets[0] != targets[1] and targets[0] != targets[2] and targets[1] != targets[2]
    best = [weights(folder(job) / "best_target_model.pt")["head.weight"] for job in seeds]
    assert not torch.equal(best[0], best[1]) and not torch.equal(best[1], best[2])


def test_in_a_pack_the_fine_tuning_seeds_share_one_base_model_too(lab_runs):
    # Two base models for five members (fold 1's three seeds share one; fold 3 needs none), the keys the
    # solo runs stored.
    assert lab_runs["pack_out"].count("BASE_TRAINED") == 2
    seeds_cache, other_cache, pack_cache = lab_runs["caches"]
    assert len(other_cache) == 1 and pack_cache == sorted(seeds_cache + other_cache)


def test_a_pack_of_dropout_members_equals_their_solo_runs_bit_for_bit(lab_runs):
    for job, member in zip(lab_runs["seeds"] + lab_runs["others"], lab_runs["members"]):
        identical(folder(job), folder(member))
        hyper = read(folder(member))["hyperparameters.json"]
        assert hyper["pack_size"] == 5 and hyper["dropout"] == 0.5
    weighted = read(folder(lab_runs["members"][3]))["hyperparameters.json"]
    assert weighted["pos_weight"] == 3.0 and weighted["fold"] == 2


def test_pos_weight_changes_the_target_phase_only(data, lab_runs, tmp_path):
    # The weighted fold again without --pos_weight, reusing its base model: the base part is the same,
    # the target phase's loss (training and validation) is not.
    job = dict(lab_runs["others"][0], pos_weight=None, prefix="unweighted")
    assert solo(job) == 0
    weighted, unweighted = read(folder(lab_runs["others"][0])), read(folder(job))
    assert unweighted["metrics.json"]["base_key"] == weighted["metrics.json"]["base_key"]
    assert base_part(weighted)[1] == base_part(unweighted)[1]
    for curve in ("target_train_loss", "target_val_loss"):
        assert weighted["losses.json"][curve] != unweighted["losses.json"][curve], curve


# ---------------------------------------------------------------- 6. your own model

USER_MODEL = '''\
import torch
from torch import nn


class Small(nn.Module):
    """A convolution, the mean over time, and a Linear head: one logit per window."""

    def __init__(self, n_channels, width):
        super().__init__()
        self.conv = nn.Conv1d(n_channels, width, 3, padding=1)
        self.head = nn.Linear(width, 1)

    def features(self, x):
        return torch.relu(self.conv(x)).mean(dim=2)

    def forward(self, x):
        return self.head(self.features(x)).squeeze(1)


def small(n_channels, width=3):
    return Small(n_channels, width)


class Normed(Small):
    def __init__(self, n_channels):
        super().__init__(n_channels, 4)
        self.norm = nn.BatchNorm1d(4)

    def features(self, x):
        return torch.relu(self.norm(self.conv(x))).mean(dim=2)


def batchnorm(n_channels):
    return Normed(n_channels)


def not_a_module(n_channels):
    return "a string"


class Column(Small):
    def forward(self, x):
        return self.head(self.features(x))  # (N, 1): not squeezed


def column(n_channels):
    return Column(n_channels, 4)
'''


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lab_model") / "lab_model.py"
    path.write_text(USER_MODEL)
    return path


@pytest.fixture(scope="module")
def user_runs(data, user_file, tmp_path_factory):
    """A user model's folds 0 and 1 (one fine-tuning the base model with --pos_weight), each alone."""
    root = tmp_path_factory.mktemp("user")
    common = dict(shared(data, root / "exp", root / "cache"), model=f"{user_file}:small", model_args='{"width": 4}')
    jobs = [dict(common, fold=0, prefix="solo"), dict(common, fold=1, seed=2, mode="target_only_fine_tuning",
                                                       pos_weight=2.0, prefix="solo")]
    for job in jobs:
        with contextlib.redirect_stdout(io.StringIO()):
            assert solo(job) == 0
    return jobs


def test_a_user_model_trains_a_fold_and_its_hash_is_in_the_provenance(user_runs, user_file):
    sha = hashlib.sha256(user_file.read_bytes()).hexdigest()
    for job in user_runs:
        provenance = json.loads((folder(job) / "provenance.json").read_text())
        assert provenance["model_source_sha256"] == sha and provenance["model_args"] == {"width": 4}
        assert provenance["base_model"]["model_source_sha256"] == sha
        state = weights(folder(job) / "best_target_model.pt")
        assert state["conv.weight"].shape == (4, 3, 3)  # --model_args reached the factory
        assert read(folder(job))["metrics.json"]["target_epochs_run"] == 3
    # --finetune_layers head trains its `head` attribute.
    assert head_names(build(parse("--model", f"{user_file}:small"), 3)) == ["head.weight", "head.bias"]


def test_a_user_model_trains_in_a_pack_as_alone(user_runs, tmp_path):
    members = [dict(job, prefix="pack", base_cache_dir=str(tmp_path / "pack_cache")) for job in user_runs]
    status, out = train_pack(members, tmp_path / "jobs.json")
    assert status == 0, out
    assert "trains alone" not in out  # it stacks: no buffers, no dropout
    for job, member in zip(user_runs, members):
        identical(folder(job), folder(member))


def test_a_user_model_file_and_its_arguments_are_in_the_base_key(tmp_path):
    path = tmp_path / "lab_model.py"
    path.write_text(USER_MODEL)
    spec = f"{path}:small"
    before = key("--model", spec)
    assert key("--model", spec) == before
    assert key("--model", spec, "--model_args", '{"width": 5}') != before
    path.write_text(USER_MODEL + "# one more line\n")
    assert key("--model", spec) != before


def test_a_user_model_a_pack_cannot_stack_trains_alone_and_publishes_each_member(data, user_file, tmp_path):
    common = dict(shared(data, tmp_path / "exp", tmp_path / "cache", epochs=2), model=f"{user_file}:batchnorm",
                  mode="target_only", prefix="bn")
    jobs = [dict(common, fold=0), dict(common, fold=3, seed=3)]
    status, out = train_pack(jobs, tmp_path / "jobs.json")
    assert status == 0, out
    said = [line for line in out.splitlines() if "trains alone" in line]
    assert len(said) == 1 and "BatchNorm" in said[0], out
    assert out.count("MEMBER_DONE") == 2
    for job in jobs:
        assert f"RESULT_DIR {folder(job)}" in out
        assert (folder(job) / "best_target_model.pt").is_file()
    # Each ran as its solo run would: the same results.
    job = dict(jobs[1], prefix="bn_solo")
    with contextlib.redirect_stdout(io.StringIO()):
        assert solo(job) == 0
    identical(folder(job), folder(jobs[1]))


@pytest.mark.parametrize("trainer", ["oct1_train.py", "pack_train.py"])
@pytest.mark.parametrize("broken, needle", [("nowhere.py:small", "no such file"), ("lab_model.py:absent", "absent"),
                                            ("lab_model.py:not_a_module", "not a torch.nn.Module"),
                                            ("lab_model.py:column", "(2, 1)")])
def test_a_broken_user_model_is_one_line_and_exit_2(data, user_file, tmp_path, capsys, trainer, broken, needle):
    spec = f"{user_file.parent / broken}"
    job = dict(shared(data, tmp_path / "exp", tmp_path / "cache"), model=spec, fold=1, prefix="broken")
    if trainer == "oct1_train.py":
        assert solo(job) == 2
    else:
        assert train_pack([job, dict(job, fold=2)], tmp_path / "jobs.json")[0] == 2
    one_line_error(capsys, needle, spec)
    assert not (tmp_path / "exp").exists() and entries(tmp_path / "cache") == []


# ---------------------------------------------------------------- 7. fine-tuning only the head

def assert_only_the_head_moved(result_folder, cache):
    metrics = read(result_folder)["metrics.json"]
    base, tuned = base_model(cache, metrics), weights(result_folder / "best_target_model.pt")
    assert base.keys() == tuned.keys() and HEAD < set(tuned)
    for name in tuned:
        if name in HEAD:
            assert not torch.equal(base[name], tuned[name]), f"{result_folder}: {name} did not train"
        else:
            assert torch.equal(base[name], tuned[name]), f"{result_folder}: {name} changed"
    return metrics


def test_finetune_layers_head_leaves_every_other_tensor_the_base_models(lab_runs):
    # Fold 1 of the lab runs with the head only: the base model is reused (the flag is not in its key).
    job = dict(lab_runs["seeds"][0], finetune_layers="head", prefix="head/solo")
    with contextlib.redirect_stdout(io.StringIO()):
        assert solo(job) == 0
    metrics = assert_only_the_head_moved(folder(job), job["base_cache_dir"])
    assert metrics["base_model_reused"] and metrics["base_key"] == lab_runs["seed_entries"][0]
    # In a pack, with full_fine_tuning too (fold 2, named by its participant, with --pos_weight); the
    # bases come from the lab pack's cache.
    members = [dict(lab_runs["members"][0], finetune_layers="head", prefix="head/pack"),
               dict(lab_runs["members"][3], fold="c", finetune_layers="head", prefix="head/pack")]
    status, out = train_pack(members, Path(job["experiments_dir"]).parent / "head_jobs.json")
    assert status == 0, out
    assert "BASE_TRAINED" not in out
    members[1]["fold"] = 2
    for member in members:
        assert_only_the_head_moved(folder(member), member["base_cache_dir"])
    assert read(folder(members[1]))["hyperparameters.json"]["mode"] == "full_fine_tuning"
    identical(folder(job), folder(members[0]))  # the same job alone and in the pack


def test_finetune_layers_head_without_a_base_model_is_one_line(data, tmp_path, capsys):
    job = dict(shared(data, tmp_path / "exp", tmp_path / "cache"), fold=0, mode="target_only",
               finetune_layers="head", prefix="head")
    assert solo(job) == 2
    one_line_error(capsys, "--finetune_layers head", "target_only")
    assert train_pack([job], tmp_path / "jobs.json")[0] == 2
    one_line_error(capsys, "--finetune_layers head", "target_only")
    assert not (tmp_path / "exp").exists()


# ---------------------------------------------------------------- 8. no epoch cap, folds by name

def test_max_epochs_none_runs_each_phase_until_its_patience_ends(noisy, tmp_path):
    job = dict(shared(noisy, tmp_path / "exp", tmp_path / "cache"), fold=2, prefix="uncapped", lr=0.02,
               base_channels=4, max_epochs="none", early_stopping_patience=2, early_stopping_patience_target=3)
    assert solo(job) == 0
    results = read(folder(job))
    metrics, hyper = results["metrics.json"], results["hyperparameters.json"]
    assert hyper["max_epochs"] == "none"
    base_epochs, target_epochs = metrics["base_epochs_run"], metrics["target_epochs_run"]
    assert base_epochs > 0 and target_epochs > 0
    # Each stopped as its patience ran out after its best epoch, not at a cap.
    assert metrics["best_base_epoch"] + 2 == base_epochs
    assert metrics["best_target_epoch"] + 3 == metrics["transition_epoch"] + target_epochs
    assert "under-trained" not in (folder(job) / "train.log").read_text()
    # A pack runs it uncapped alike.
    member = dict(job, prefix="uncapped_pack", base_cache_dir=str(tmp_path / "pack_cache"))
    status, out = train_pack([member], tmp_path / "jobs.json")
    assert status == 0, out
    identical(folder(job), folder(member))


def test_a_fold_named_by_its_participant_is_that_fold(lab_runs, tmp_path):
    by_index = lab_runs["seeds"][0]
    by_name = dict(by_index, fold="b", prefix="by_name", base_cache_dir=str(tmp_path / "cache"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert solo(by_name) == 0
    written = sorted(p.name for p in Path(by_index["experiments_dir"], "by_name").iterdir())
    assert written == ["fold1_b"]
    by_name["fold"] = 1
    identical(folder(by_index), folder(by_name))  # base model trained again here: the same bits


def test_a_grid_names_its_folds_by_participant(data):
    spec = {"prefix": "named", "folds": ["c", 0], "fixed": {"data_path": str(data)}, "grid": {"seed": [1, 2]}}
    jobs, _ = grid.expand(grid.apply_sets(spec, []), grid.load_script_parser(OCT1))
    assert Counter(job["fold"] for job in jobs) == {2: 2, 0: 2}


# ---------------------------------------------------------------- 9. the manuscript's grid

def test_the_manuscript_grid_over_17_participants_gives_612_jobs_and_17_base_models(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [f"P{i:02d}" for i in range(1, 18)]
    write_tiny_dataset(tmp_path / "data", participants=names, channels=6, window=16, sizes=(4, 4, 4))
    argv = [str(ROOT / "examples" / "manuscript_grid.json"), "--set", f"data_path={tmp_path / 'data'}",
            "-o", "jobs.json", "--script", OCT1]
    assert generate_jobs.main(argv) == 0
    jobs = json.loads((tmp_path / "jobs.json").read_text())
    assert len(jobs) == 612 and not any(job["mode"] == "base_only" for job in jobs)
    assert Counter(job["mode"] for job in jobs) == {"target_only_fine_tuning": 306, "target_only": 306}
    assert len({job["base_key"] for job in jobs if "base_key" in job}) == 17
    assert Counter(job["fold"] for job in jobs) == {fold: 36 for fold in range(17)}
    assert {job["seed_finetune"] for job in jobs} == {1, 2, 3}
    assert {job["target_data_pct"] for job in jobs} == {0.01, 0.05, 0.1, 0.25, 0.5, 1.0}
    args = grid.parse_job(grid.load_script_parser(OCT1), jobs[0], "job 0")
    assert (args.batch_size, args.lr, args.max_epochs, args.early_stopping_metric) == (32, 3e-4, "none", "f1")
    assert (args.early_stopping_patience, args.early_stopping_patience_target) == (50, 200)
    assert n_parameters(build(args, 6)) == 50_753
    capsys.readouterr()
    cluster = write_json(tmp_path / "cluster.json", {"servers": [{"host": "here", "local": True, "gpus": [0]}],
                                                     "script_path": OCT1})
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", "jobs.json", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# 612 jobs + 17 base-model jobs" in out
    assert "# phase 1: 17 base jobs; phase 2: 306 dependent jobs (+ 306 independent)" in out
