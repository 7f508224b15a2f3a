"""Run by tests/distributed/test_fsdp2.py under `torchrun --nproc_per_node=2` (gloo, CPU).

One launch runs every scenario (a torchrun start costs more than all of them together); each
rank trains on its own data. Rank 0 writes {scenario: result} to argv[1] as JSON; argv[2] is a
scratch directory for the distributed checkpoint. A scenario that raises records the error
(the same on both ranks: FW-LoRA's refusals come before any collective).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers
warnings.simplefilter("ignore")  # third-party noise; the test checks results, not warnings

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from fsdp2_common import (  # noqa: E402  (the shared set-up and helpers)
    FW,
    STEPS,
    compare,
    data,
    run_ddp,
    run_fsdp2,
    shard,
    summary,
    train,
)
from fsdp2_stacks import (  # noqa: E402
    scenario_accelerate_fsdp2,
    scenario_accelerate_fsdp2_resume,
    scenario_trainer_fsdp2,
    scenario_trainer_fsdp2_resume,
)
from torch.distributed.checkpoint.state_dict import (  # noqa: E402
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import Shard  # noqa: E402
from torch.distributed.tensor.debug import CommDebugMode  # noqa: E402

from fwlora import FisherAdamW  # noqa: E402
from fwlora.optim import distributed as fw_dist  # noqa: E402
from fwlora.optim.options import DEFAULTS  # noqa: E402
from fwlora.optim.penalty import FisherPenalty  # noqa: E402
from fwlora.optim.state_entry import take_entry  # noqa: E402
from fwlora.optim.targets import find_adapter_matrices  # noqa: E402
from tiny import tiny_lora_model  # noqa: E402


# ------------------------------------------------------------------ scenarios
def scenario_equivalence(rank: int, cache: dict) -> dict:
    cache["ddp"], cache["fsdp2"] = run_ddp(rank), run_fsdp2(rank)
    return compare(cache["ddp"], cache["fsdp2"])


def scenario_uneven_shards(rank: int, cache: dict) -> dict:
    # r = 3 on 2 ranks: A (3 × in) is sharded 2 / 1 rows.
    return compare(run_ddp(rank, lora_rank=3), run_fsdp2(rank, lora_rank=3))


def scenario_hsdp(rank: int, cache: dict) -> dict:
    """HSDP's layout (Replicate(), Shard(0)) on a 2 × 1 mesh: 2 replicas of 1 shard each."""
    from torch.distributed.tensor import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("replicate", "shard"))
    result = compare(cache["ddp"], run_fsdp2(rank, mesh=mesh))
    model = tiny_lora_model(seed=0, dtype=torch.float32)
    shard(model, mesh=mesh)
    result["placements"] = str(find_adapter_matrices(model)[0].lora_A.placements)
    return result


def scenario_decoupled(rank: int, cache: dict) -> dict:
    # penalty="decoupled": AdamW's decay of each adapter scaled by (1 - I_m), on the shards.
    # λ is not used in this mode (FisherOptions refuses a non-default one): back to the default.
    options = {"penalty": "decoupled", "weight_decay": 0.5, "lam": DEFAULTS.lam}
    return compare(run_ddp(rank, **options), run_fsdp2(rank, **options))


def scenario_lam_auto(rank: int, cache: dict) -> dict:
    # λ calibrated at step K + 1 from global norms: the same on every rank, DDP or FSDP2.
    options = {"lam": "auto", "target_ratio": 2.0}
    return compare(run_ddp(rank, **options), run_fsdp2(rank, **options))


def scenario_accumulation(rank: int, cache: dict) -> dict:
    return compare(run_ddp(rank, accumulate=2), run_fsdp2(rank, accumulate=2))


def built_before_remapped(rank: int, accumulate: int = 1) -> dict:
    """accelerate.prepare's order: optimizer first, then fully_shard, then the optimizer's
    param_groups remapped to the sharded parameters by name (fsdp2_switch_optimizer_parameters).
    With `accumulate`, every micro-batch syncs (no no_sync): the first step's statistics are
    taken before FW-LoRA has seen the sharded parameters."""
    model = tiny_lora_model(seed=0, dtype=torch.float32)
    opt = FisherAdamW(model, **FW)
    names = {id(p): n for n, p in model.named_parameters()}
    old = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
    shard(model)
    new = dict(model.named_parameters())
    for group, group_names in zip(opt.param_groups, old):
        group["params"] = [new[n] for n in group_names]
    batches_ = data(rank, STEPS * accumulate)
    for step in range(STEPS):
        for k in range(accumulate):
            (model(**batches_[step * accumulate + k]).loss / accumulate).backward()
        opt.step()
        opt.zero_grad()
    return summary(model, opt)


def scenario_built_before_remapped(rank: int, cache: dict) -> dict:
    return compare(cache["ddp"], built_before_remapped(rank))


def scenario_built_before_remapped_accumulation(rank: int, cache: dict) -> dict:
    return compare(run_ddp(rank, accumulate=2), built_before_remapped(rank, accumulate=2))


def scenario_built_before_not_remapped(rank: int, cache: dict) -> dict:
    model = tiny_lora_model(seed=0, dtype=torch.float32)
    opt = FisherAdamW(model, **FW)
    shard(model)
    batch = data(rank, 1)[0]
    model(**batch).loss.backward()
    opt.step()  # raises
    return {"error": None}


def scenario_penalty_exact(rank: int, cache: dict) -> dict:
    """add_gradients / value on sharded factors vs the same on whole ones (float64), and the
    collectives they run: per shape group, one all-gather of A and one all-reduce of BᵀB
    (A sharded on r, FSDP2's default); two r × r all-reduces when A is sharded along in."""
    out = {}
    for layout, kwargs in (
        ("default", {}),
        ("a_on_in", {"shard_placement_fn": lambda p: Shard(1) if p.shape[0] == 4 else None}),
    ):
        reference = tiny_lora_model(seed=0, dtype=torch.float64)
        model = tiny_lora_model(seed=0, dtype=torch.float64)
        shard(model, **kwargs)
        whole, parts = find_adapter_matrices(reference), find_adapter_matrices(model)
        factors = torch.linspace(0.1, 1.0, len(whole), dtype=torch.float64).tolist()
        errors = []
        results = {}
        for name, matrices in (("whole", whole), ("sharded", parts)):
            penalty = FisherPenalty(matrices)
            penalty.set_factors(factors)
            zero_grads(matrices)
            with CommDebugMode() as comm:
                penalty.add_gradients(0.5)
            grads = [(m.lora_A.grad.clone(), m.lora_B.grad.clone()) for m in matrices]
            zero_grads(matrices)
            sq = penalty.add_gradients(0.5, measure=True)
            results[name] = (grads, sq, penalty.value(), comm.get_comm_counts())
        for (gw_a, gw_b), (gs_a, gs_b) in zip(results["whole"][0], results["sharded"][0]):
            errors.append(float((gw_a - gs_a.full_tensor()).abs().max()))
            errors.append(float((gw_b - gs_b.full_tensor()).abs().max()))
        for mw, ms in zip(whole, parts):  # the same weights on both sides
            errors.append(float((mw.lora_A - ms.lora_A.full_tensor()).abs().max()))
            errors.append(float((mw.lora_B - ms.lora_B.full_tensor()).abs().max()))
        _, sq_w, value_w, _ = results["whole"]
        _, sq_s, value_s, counts = results["sharded"]
        groups = len(FisherPenalty(parts).groups)
        out[layout] = {
            "grad_max_err": max(errors),
            "grad_scale": max(float(g.abs().max()) for pair in results["whole"][0] for g in pair),
            "value_rel_err": abs(float(value_w) - float(value_s)) / abs(float(value_w)),
            "measure_rel_err": abs(float(sq_w) - float(sq_s)) / abs(float(sq_w)),
            "groups": groups,
            "placements_A": str(parts[0].lora_A.placements),
            "comm_counts": {getattr(k, "__name__", str(k)): v for k, v in counts.items()},
        }
    return out


def zero_grads(matrices) -> None:
    for m in matrices:
        for p in (m.lora_A, m.lora_B):
            p.grad = torch.zeros_like(p)


def scenario_resume(rank: int, cache: dict, scratch: Path) -> dict:
    """Save mid-warm-up (step 3 of 4, an observation not yet in the core) with
    torch.distributed.checkpoint, resume in fresh objects, and run on in lock-step with the
    uninterrupted run of `equivalence`."""
    ckpt = scratch / "ckpt-3"
    batches_ = data(rank, STEPS)
    model = tiny_lora_model(seed=0, dtype=torch.float32)
    shard(model)
    opt = FisherAdamW(model, **FW)
    train(model, model, opt, batches_, steps=3)
    # torch's own functions: FW-LoRA's state is an entry of the first param group.
    optim_state = get_optimizer_state_dict(model, opt)
    has_entry = "fwlora" not in optim_state and "fwlora" in optim_state["param_groups"][0]
    dcp.save({"model": get_model_state_dict(model), "optim": optim_state}, checkpoint_id=ckpt)

    model2 = tiny_lora_model(seed=1, dtype=torch.float32)  # other weights: the load must matter
    shard(model2)
    opt2 = FisherAdamW(model2, **FW)
    state = {
        "model": get_model_state_dict(model2),
        "optim": get_optimizer_state_dict(model2, opt2),
    }
    dcp.load(state, checkpoint_id=ckpt)
    set_model_state_dict(model2, state["model"])
    set_optimizer_state_dict(model2, opt2, copy.deepcopy(state["optim"]))
    step_after_load = opt2.fisher_weighting.step
    train(model2, model2, opt2, batches_, first=3)
    result = compare(cache["fsdp2"], summary(model2, opt2))
    result.update(has_entry=has_entry, step_after_load=step_after_load)
    result["entry_in_live_groups"] = any("fwlora" in g for g in opt2.param_groups)

    # Loaded again (the deep copy kept the checkpoint's state): back to step 3. Without the
    # entry: refused, not silently reset.
    set_optimizer_state_dict(model2, opt2, copy.deepcopy(state["optim"]))
    result["torch_step_after_load"] = opt2.fisher_weighting.step
    _, without = take_entry(copy.deepcopy(state["optim"]), "the test")
    try:
        set_optimizer_state_dict(model2, opt2, without)
        result["plain_load_error"] = None
    except ValueError as exc:
        result["plain_load_error"] = str(exc)
    return result


def scenario_layouts_refused(rank: int, cache: dict) -> dict:
    """DTensor factors that are not FSDP2's: two Shard placements (tensor parallelism on a
    2-D mesh), and a mesh over part of the world. Each must be refused."""
    import dataclasses

    from torch.distributed.tensor import distribute_tensor, init_device_mesh

    model = tiny_lora_model(seed=0, dtype=torch.float32)
    (m, *_) = find_adapter_matrices(model)
    out = {}
    mesh2d = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))
    cases = {
        "two_shards": (mesh2d, [Shard(0), Shard(1)]),
        "part_of_world": (mesh2d["dp"], [Shard(0)]),
        "fsdp_like": (mesh2d["tp"], [Shard(0)]),
    }
    for case, (mesh, placements) in cases.items():
        a = torch.nn.Parameter(distribute_tensor(m.lora_A.detach(), mesh, placements))
        b = torch.nn.Parameter(distribute_tensor(m.lora_B.detach(), mesh, placements))
        try:
            fw_dist.check_sharding([dataclasses.replace(m, lora_A=a, lora_B=b)])
            out[case] = None
        except ValueError as exc:
            out[case] = str(exc)
    return out


SCENARIOS = [
    ("equivalence", scenario_equivalence),
    ("uneven_shards", scenario_uneven_shards),
    ("hsdp", scenario_hsdp),
    ("decoupled", scenario_decoupled),
    ("accumulation", scenario_accumulation),
    ("lam_auto", scenario_lam_auto),
    ("built_before_remapped", scenario_built_before_remapped),
    ("built_before_remapped_accumulation", scenario_built_before_remapped_accumulation),
    ("built_before_not_remapped", scenario_built_before_not_remapped),
    ("penalty_exact", scenario_penalty_exact),
    ("resume", scenario_resume),
    ("layouts_refused", scenario_layouts_refused),
    # accelerate's state is process-wide: these two reset it before and after.
    ("trainer_fsdp2", scenario_trainer_fsdp2),
    ("accelerate_fsdp2", scenario_accelerate_fsdp2),
    ("accelerate_fsdp2_resume", scenario_accelerate_fsdp2_resume),
    ("trainer_fsdp2_resume", scenario_trainer_fsdp2_resume),
]


def main(result_path: str, scratch: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    only = set(os.environ.get("FSDP2_SCENARIOS", "").split(",")) - {""}
    cache: dict = {}
    results: dict = {}
    for name, fn in SCENARIOS:
        if only and name not in only:
            continue
        try:
            if name in (
                "resume",
                "trainer_fsdp2",
                "accelerate_fsdp2_resume",
                "trainer_fsdp2_resume",
            ):
                results[name] = fn(rank, cache, Path(scratch))
            else:
                results[name] = fn(rank, cache)
        except Exception as exc:  # recorded; the test decides whether it was expected
            results[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-2000:],
            }
        dist.barrier()
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, json.dumps(results, sort_keys=True))
    if rank == 0:
        Path(result_path).write_text(json.dumps({"ranks": [json.loads(r) for r in everyone]}))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)
