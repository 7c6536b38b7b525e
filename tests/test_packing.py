"""packing.py: which jobs share a pack, how many a slot takes, and how big "auto" is."""
import json

from engine import flags, models
from runner import packing
from runner.plan import Plan, Task


def tasks(jobs, phase="target"):
    return [Task(job, pack_key=packing.pack_group(job, phase)) for job in jobs]


def test_only_the_flags_a_pack_may_vary_may_differ():
    base = {"data_path": "d", "batch_size": 64, "max_epochs": 5, "job_id": "x", "base_key": "k1"}
    varied = dict(base, fold=3, seed=2, lr=0.1, mode="target_only", prefix="other", overwrite=True,
                  job_id="y", base_key="k2")
    assert packing.pack_group(base, "target") == packing.pack_group(varied, "target")
    assert packing.pack_group(base, "target") != packing.pack_group(base, "base")
    for flag, value in (("batch_size", 32), ("max_epochs", 6), ("data_path", "e"), ("model", "test_pool4")):
        assert packing.pack_group(dict(base, **{flag: value}), "target") != packing.pack_group(base, "target")
    assert packing.pack_group(dict(base, print_base_key=True), "target") is None


def test_every_model_packs_but_members_of_different_architectures_never_share_a_pack():
    base = {"fold": 0, "batch_size": 8}
    for name in models.MODELS:  # dropout too: a pack draws each member's masks as its solo run
        assert packing.pack_group(dict(base, model=name), "target") is not None
    for flag in flags.ARCHITECTURE_FLAGS + ("model_args",):
        assert flag not in flags.MAY_DIFFER
    groups = {packing.pack_group(dict(base, **change), "target") for change in (
        {}, {"base_channels": 64}, {"use_dilation": True}, {"dropout": 0.5}, {"num_blocks": 5},
        {"use_residual": True}, {"model": "lab.py:make"}, {"model": "lab.py:make", "model_args": '{"k": 1}'})}
    assert len(groups) == 8
    seeds = {packing.pack_group(dict(base, seed_finetune=s, pos_weight=w), "target") for s, w in ((1, 2.0), (2, 9.0))}
    assert len(seeds) == 1  # fine-tuning seeds and class weights share a pack


def test_a_slot_takes_its_share_of_its_group_and_never_mixes_groups():
    jobs = [{"fold": f, "batch_size": 8} for f in range(5)] + [{"fold": 9, "batch_size": 16}]
    ready = tasks(jobs)
    assert [t.job["fold"] for t in packing.next_pack(ready, 32, 1)] == [0, 1, 2, 3, 4]
    assert [t.job["fold"] for t in packing.next_pack(ready, 32, 2)] == [0, 1, 2]  # ceil(5 / 2)
    assert [t.job["fold"] for t in packing.next_pack(ready, 2, 1)] == [0, 1]
    assert [t.job["fold"] for t in packing.next_pack(ready, 1, 1)] == [0]
    assert [t.job["fold"] for t in packing.next_pack(ready[5:], 32, 1)] == [9]


def test_a_pack_stays_under_the_command_line_limit():
    jobs = [{"fold": f, "prefix": "p" * 20_000} for f in range(8)]
    pack = packing.next_pack(tasks(jobs), 32, 1)
    assert len(pack) == 4 and len(json.dumps([t.job for t in pack])) <= packing.MAX_JOBS_TEXT
    assert len(packing.next_pack(tasks([{"prefix": "p" * 200_000}] * 2), 32, 1)) == 1  # never fewer than one


def test_auto_size_and_limits():
    assert packing.auto_size(143_771, 0, 1) == packing.MAX_AUTO  # an H200
    assert packing.auto_size(8192, 2048, 2) == 6  # (8192 - 2048) / 2 / 512
    assert packing.auto_size(1024, 4096, 1) == 1
    server = {"pack": "auto"}
    assert packing.pack_limit(server, "cpu", lambda: 7) == 1
    assert packing.pack_limit(server, 0, lambda: 7) == 7
    assert packing.pack_limit({"pack": 3}, "cpu", lambda: 7) == 3
    assert packing.trainer_path("proj/oct1_train.py") == "proj/pack_train.py"
    assert packing.trainer_path("train.py") is None


def test_the_planner_shares_a_group_among_the_usable_slots_without_a_process(tmp_path):
    def plan():
        return Plan(tasks([{"fold": f} for f in range(24)]), None, tmp_path)
    four, one = (lambda: 4), (lambda: 1)
    queue = plan()
    assert [len(queue.take(32, usable=four)) for _ in range(4)] == [6, 6, 6, 6]  # counted as each is handed out
    assert len(plan().take(32, usable=one)) == 24  # 3 slots busy elsewhere
    queue = plan()
    first = queue.take(32, usable=four)
    queue.process_done()  # that slot's process ended: 4 slots without a process share the 18 left
    assert (len(first), len(queue.take(32, usable=four))) == (6, 5)
