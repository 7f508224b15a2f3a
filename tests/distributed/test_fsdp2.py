"""FW-LoRA under FSDP2 (torch.distributed.fsdp.fully_shard), 2 ranks on gloo / CPU.

One torchrun launch of fsdp2_worker.py (beside this file) runs every scenario (module
fixture); each test below reads its part. Each rank trains on its own data; the DDP run
(already supported) is the reference. The refusals that need no process group are in
test_sharding.py.
"""

from __future__ import annotations

import json

import pytest
from two_ranks import run_two_ranks

WEIGHT_TOL = 1e-5  # fp32, 8 steps: the bound
IMPORTANCE_TOL = 1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """{scenario: result} from rank 0, after checking both ranks reported the same."""
    tmp = tmp_path_factory.mktemp("fsdp2")
    result_path = tmp / "result.json"
    run_two_ranks("fsdp2_worker.py", result_path, tmp / "scratch", timeout=600)
    r0, r1 = json.loads(result_path.read_text())["ranks"]
    # Every rank computed the same importances, weights (gathered), penalty and ratios.
    assert r0 == r1
    return r0


def _ok(result: dict) -> dict:
    assert "error" not in result, result.get("traceback", result.get("error"))
    return result


def _assert_equivalent(result: dict) -> None:
    ddp_types, fsdp_types = result["factor_types"]
    assert ddp_types == ["Parameter"] and fsdp_types == ["DTensor"]  # FSDP2 really sharded
    assert result["steps"] == [8, 8]
    assert result["weight_names_equal"]
    assert result["importance_max_diff"] <= IMPORTANCE_TOL
    assert result["fisher_max_rel_diff"] <= 1e-5  # float32 statistics, summed in another order
    assert result["weight_max_diff"] <= WEIGHT_TOL
    # The bound means something: the weights moved far more than it, and the penalty acted
    # (‖∇P‖ / ‖∇L‖ of order 1 on the 4 penalised steps) with the same strength on both.
    assert result["moved"] > 1e3 * WEIGHT_TOL
    ddp_ratios, fsdp_ratios = result["ratios"]
    assert len(ddp_ratios) == 4 and min(ddp_ratios) > 0.5
    assert fsdp_ratios == pytest.approx(ddp_ratios, rel=1e-5)
    assert result["penalty"][1] == pytest.approx(result["penalty"][0], rel=1e-5)
    assert max(result["importance"]) > 3 * min(result["importance"])  # not uniform


@pytest.mark.slow
def test_fsdp2_matches_ddp(runs):
    _assert_equivalent(_ok(runs["equivalence"]))


@pytest.mark.slow
def test_fsdp2_uneven_shards_match_ddp(runs):
    # LoRA rank 3 on 2 ranks: A's rows split 2 / 1.
    _assert_equivalent(_ok(runs["uneven_shards"]))


@pytest.mark.slow
def test_hsdp_layout_matches_ddp(runs):
    result = _ok(runs["hsdp"])
    assert result["placements"] == "(Replicate(), Shard(dim=0))"
    _assert_equivalent(result)


@pytest.mark.slow
def test_fsdp2_decoupled_penalty_matches_ddp(runs):
    result = _ok(runs["decoupled"])
    assert result["factor_types"] == [["Parameter"], ["DTensor"]]
    assert result["ratios"] == [[], []]  # the decoupled reading adds no gradient
    assert result["importance_max_diff"] <= IMPORTANCE_TOL
    assert result["weight_max_diff"] <= WEIGHT_TOL
    assert result["moved"] > 1e3 * WEIGHT_TOL


@pytest.mark.slow
def test_lam_auto_calibrates_the_same_lambda_under_ddp_and_fsdp2(runs):
    # Both ranks report the same (the fixture checks it), so each computed the same λ.
    result = _ok(runs["lam_auto"])
    _assert_equivalent(result)
    ddp_lam, fsdp_lam = result["lams"]
    assert ddp_lam > 0 and fsdp_lam == pytest.approx(ddp_lam, rel=1e-5)


@pytest.mark.slow
def test_fsdp2_gradient_accumulation_without_sync_matches_ddp(runs):
    # set_requires_gradient_sync(False) on the first micro-batch (what accelerate and the
    # Trainer do): its statistic must count although the sharded .grad is still unset.
    _assert_equivalent(_ok(runs["accumulation"]))


@pytest.mark.slow
def test_built_before_sharding_and_remapped_like_accelerate(runs):
    # accelerate.prepare(model, optimizer) under FSDP2: optimizer first, then fully_shard,
    # then the optimizer remapped to the new parameters: FW-LoRA adopts them.
    _assert_equivalent(_ok(runs["built_before_remapped"]))


@pytest.mark.slow
def test_built_before_sharding_remapped_with_accumulation(runs):
    # Step 1's micro-batches are observed before FW-LoRA has adopted the sharded factors (at
    # that step's optimizer call); each syncing micro-batch must still count.
    _assert_equivalent(_ok(runs["built_before_remapped_accumulation"]))


@pytest.mark.slow
def test_accelerate_fsdp2_prepare_and_accumulate_match_ddp(runs):
    # accelerate's real FSDP2 code (forced on CPU, where accelerate would fall back to DDP):
    # prepare() shards and remaps the optimizer, accumulate() defers the gradient sync.
    result = _ok(runs["accelerate_fsdp2"])
    assert result["syncs"] == [False, True, False, True]
    _assert_equivalent(result)


@pytest.mark.slow
def test_trainer_fsdp2_matches_trainer_ddp(runs):
    # transformers.Trainer with fsdp_config version 2 (forced on CPU as above): it builds
    # FisherAdamW (optimizer_cls_and_kwargs) before accelerate shards and remaps it; gradient
    # accumulation 2, clipping, FisherCallback; vs the same Trainer under DDP.
    result = _ok(runs["trainer_fsdp2"])
    _assert_equivalent(result)
    # FisherCallback logged P (a collective under FSDP2) at steps 2, 4, 6, 8 on both ranks.
    ddp_logged, fsdp_logged = result["logged_penalties"]
    assert len(fsdp_logged) == 4 and fsdp_logged[-1] > 0.0
    assert fsdp_logged == pytest.approx(ddp_logged, rel=1e-5)


@pytest.mark.slow
def test_built_before_sharding_not_remapped_is_refused(runs):
    error = runs["built_before_not_remapped"].get("error") or ""
    assert error.startswith("ValueError: optimizer: the model's LoRA parameters were replaced")
    assert "Build the optimizer after fully_shard(model)" in error


@pytest.mark.slow
def test_sharded_penalty_is_exact_and_communicates_only_small_tensors(runs):
    result = _ok(runs["penalty_exact"])
    for layout in ("default", "a_on_in"):
        r = result[layout]
        assert r["grad_scale"] > 0.1  # the gradients compared are not all zero
        assert r["grad_max_err"] <= 1e-12
        assert r["value_rel_err"] <= 1e-12
        assert r["measure_rel_err"] <= 1e-12
    groups = result["default"]["groups"]
    assert groups == 3
    # FSDP2's default layout (A sharded on its rank dim): per shape group, one all-gather of
    # the stacked A (n × r × in) and one all-reduce of the r × r BᵀB; nothing of W's size.
    assert result["default"]["placements_A"] == "(Shard(dim=0),)"
    assert result["default"]["comm_counts"] == {
        "all_gather_into_tensor": groups,
        "all_reduce": groups,
    }
    # A sharded along in (shard_placement_fn): both Gram matrices are r × r all-reduces.
    assert result["a_on_in"]["placements_A"] == "(Shard(dim=1),)"
    assert result["a_on_in"]["comm_counts"] == {"all_reduce": 2 * groups}


@pytest.mark.slow
def test_dcp_resume_runs_in_lock_step(runs):
    result = _ok(runs["resume"])
    assert result["has_entry"]  # get_optimizer_state_dict carried the FW-LoRA entry
    assert result["step_after_load"] == 3  # saved mid-warm-up (K = 4)
    assert result["factor_types"] == [["DTensor"], ["DTensor"]]
    assert result["importance_max_diff"] == 0.0
    assert result["weight_max_diff"] == 0.0
    assert result["ratios"][0] == result["ratios"][1]
    assert not result["entry_in_live_groups"]  # not adopted into the live param groups
    # torch's own get_/set_optimizer_state_dict carry the entry in the first param group.
    # Without it: refused, not a silent reset.
    assert result["torch_step_after_load"] == 3
    assert "no 'fwlora' entry" in (result["plain_load_error"] or "")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["accelerate_fsdp2_resume", "trainer_fsdp2_resume"])
@pytest.mark.parametrize("step", [3, 6])  # mid-warm-up (K = 4), after it
def test_accelerate_and_trainer_checkpoints_resume_exactly(runs, scenario, step):
    # accelerate's save_state / load_state (sharded: DCP) and the Trainer's
    # resume_from_checkpoint (its FSDP2 default here: a full optimizer state dict) go through
    # torch's get_/set_optimizer_state_dict, which keep every key of a param group: FW-LoRA's
    # entry in the first one carries the state. Resumed = uninterrupted, bit for bit.
    result = _ok(runs[scenario])[f"step_{step}"]
    assert result["factor_types"] == [["DTensor"], ["DTensor"]]
    assert result["steps"] == [8, 8]
    assert result["importance_max_diff"] == 0.0 and result["fisher_max_rel_diff"] == 0.0
    assert result["weight_max_diff"] == 0.0 and result["moved"] > 0.01
    # ‖∇P‖/‖∇L‖ read-outs are kept per process, not checkpointed: the resumed run has those
    # of the steps it took, equal to the uninterrupted run's.
    full, resumed = result["ratios"]
    assert len(resumed) == min(4, 8 - step) and resumed == full[len(full) - len(resumed) :]
    if "step_after_load" in result:
        assert result["step_after_load"] == step
        assert not result["entry_in_live_groups"]  # not adopted into the live param groups


@pytest.mark.slow
def test_non_fsdp2_dtensor_layouts_are_refused(runs):
    result = _ok(runs["layouts_refused"])
    assert result["fsdp_like"] is None  # one Shard on a mesh over every rank: accepted
    assert "not tensor parallelism" in result["two_shards"]
    assert "device mesh of 1 of the 2 ranks" in result["part_of_world"]
