"""`fwlora targeting`, the premise test: the warm-up's F_m, the three sets (TOP, BOTTOM,
RANDOM at TOP's parameter count), the paired tests, and bad input refused before anything
is written."""

import json

import numpy as np
import pytest

from fwlora.cli import main
from fwlora.harness.budget import TargetLinear
from fwlora.harness.config import build_config
from fwlora.harness.data import load_task
from fwlora.harness.errors import HarnessError
from fwlora.harness.experiment import run_experiment
from fwlora.harness.targeting import (
    Plan,
    adaptable_matrices,
    analyse,
    choose_sets,
    resolve_k,
    scores,
    warmup_fisher,
    where,
)
from tiny import settings_flags, tiny_settings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_settings(tmp_path_factory.mktemp("targeting"))


def _matrices() -> list[TargetLinear]:
    """A 2-layer model's 12 matrices: 4 small (32 × 32) and 2 big per layer."""
    out = []
    for layer in range(2):
        for kind in ("attention.self.query", "attention.self.key", "attention.self.value"):
            out.append(TargetLinear(f"encoder.layer.{layer}.{kind}", 32, 32))
        out.append(TargetLinear(f"encoder.layer.{layer}.attention.output.dense", 32, 32))
        out.append(TargetLinear(f"encoder.layer.{layer}.intermediate.dense", 32, 64))
        out.append(TargetLinear(f"encoder.layer.{layer}.output.dense", 64, 32))
    return out


def test_warmup_fisher_is_the_statistic_a_fw_lora_run_measures(tiny, tmp_path):
    cfg = build_config(tiny, {"method": "fw-lora", "seed": 3, "epochs": 1})
    data = load_task(cfg)
    fisher = warmup_fisher(cfg, data)
    exp = run_experiment([cfg], tmp_path / "run")
    measured = exp.runs[0]["fisher"]["fisher"]
    assert len(fisher) == 12
    for name, value in measured.items():
        assert fisher[name.removeprefix("base_model.model.")] == pytest.approx(value, rel=1e-6)


def test_rankings_by_fisher_and_per_weight():
    matrices = _matrices()
    # F_m proportional to size: per weight every matrix is equal but the layer-1 ones.
    fisher = {
        m.name: m.in_features * m.out_features * (2.0 if ".1." in m.name else 1.0) for m in matrices
    }
    by_f = scores(fisher, matrices, "fisher")
    by_w = scores(fisher, matrices, "per-weight")
    top_f = sorted(by_f, key=lambda n: -by_f[n])[:2]
    assert all("intermediate" in n or n.endswith("layer.1.output.dense") for n in top_f)
    assert {by_w[n] for n in by_w if ".1." in n} == {2.0}
    assert {by_w[n] for n in by_w if ".0." in n} == {1.0}


def test_sets_and_the_budget_matched_random_draw():
    matrices = _matrices()
    fisher = {m.name: float(i) for i, m in enumerate(matrices)}  # later = higher
    draw = choose_sets(fisher, matrices, k=3, rank=4, seed=7)
    assert draw.top == [matrices[11].name, matrices[10].name, matrices[9].name]
    assert draw.bottom == [matrices[2].name, matrices[1].name, matrices[0].name]
    assert len(set(draw.random)) == 3
    assert abs(draw.params["random"] - draw.params["top"]) <= 0.05 * draw.params["top"]
    assert draw.params["top"] == 4 * (64 + 96 + 96)
    # Seeded: the same seed draws the same set, another seed (usually) another.
    assert choose_sets(fisher, matrices, 3, 4, seed=7).random == draw.random


def test_a_budget_no_draw_can_match_is_refused_naming_the_closest():
    matrices = _matrices()
    # TOP-4 by size = the 4 big matrices, which 1 in 495 draws matches exactly: with
    # tolerance 0 and 5 draws, the message names the closest draw.
    fisher = {m.name: float(m.in_features * m.out_features) for m in matrices}
    with pytest.raises(HarnessError, match=r"no random draw of 4 matrices .*closest had"):
        choose_sets(fisher, matrices, k=4, rank=4, seed=1, tolerance=0.0, draws=5)


@pytest.mark.parametrize(
    ("k", "fraction", "message"),
    [
        (0, None, "k: expected an integer >= 1"),
        (13, None, "more than the 12 adaptable matrices"),
        (7, None, "need at least 14 adapted matrices"),
        (None, 1.5, "fraction: expected a number in"),
        (None, None, "exactly one of --k and --fraction"),
    ],
)
def test_resolve_k_refuses(k, fraction, message):
    with pytest.raises(HarnessError, match=message):
        resolve_k(k, fraction, 12)


def test_resolve_k_from_a_fraction():
    assert resolve_k(None, 0.25, 36) == 9
    assert resolve_k(9, None, 36) == 9


def test_where_counts_types_and_layers():
    names = [
        "bert.encoder.layer.5.intermediate.dense",
        "bert.encoder.layer.5.output.dense",
        "bert.encoder.layer.4.output.dense",
        "bert.encoder.layer.4.attention.self.value",
    ]
    assert where(names) == {
        "type": {"output": 2, "intermediate": 1, "value": 1},
        "layer": {"4": 2, "5": 2},
    }


def test_analyse_pairs_by_seed_and_tests_the_differences():
    matrices = _matrices()
    fisher = {m.name: float(i) for i, m in enumerate(matrices)}
    seeds = [1, 2, 3, 4]
    draws = {(s, "fisher"): choose_sets(fisher, matrices, 2, 4, s) for s in seeds}
    plan = Plan(2, ["fisher"], matrices, {s: fisher for s in seeds}, draws, [])
    rng = np.random.default_rng(0)
    runs = []
    for s in seeds:
        base = 0.6 + 0.01 * s
        for which, shift in (("top", 0.05), ("random", 0.02 + 0.005 * rng.random()), ("bottom", 0)):
            runs.append({"label": f"{which}2-fisher", "seed": s, "final_eval_acc": base + shift})
    doc = analyse(plan, runs)
    section = doc["rankings"]["fisher"]
    assert section["seeds_complete"] == seeds
    assert section["top_minus_bottom"]["mean_difference"] == pytest.approx(0.05)
    assert section["top_minus_random"]["mean_difference"] > 0.02
    assert section["top_minus_random"]["paired_t"]["p_value"] < 0.01
    assert section["top_same_every_seed"] is True
    assert doc["ranking_stability"]["spearman_vs_first_seed"]["2"] == pytest.approx(1.0)
    # An unfinished seed is left out of the tests, and said so.
    doc = analyse(plan, runs[:-1])
    assert doc["rankings"]["fisher"]["seeds_complete"] == [1, 2, 3]


def test_targeting_command_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "premise"
    flags = settings_flags(tiny, skip=("epochs",))
    args = ["targeting", "-o", str(out), "--k", "3", "--seeds", "1,2", "--epochs", "1"]
    args += ["--rank-by", "fisher,per-weight", *flags]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "TOP − RANDOM" in printed and "ranked by per-weight" in printed
    doc = json.loads((out / "targeting.json").read_text())
    assert doc["k"] == 3 and doc["adaptable_matrices"] == 12
    for section in doc["rankings"].values():
        assert section["seeds_complete"] == [1, 2]
        for seed in section["per_seed"]:
            params = seed["lora_params"]
            assert abs(params["random"] - params["top"]) <= 0.05 * params["top"]
            assert all(len(names) == 3 for names in seed["sets"].values())
            assert set(seed["accuracy"]) == {"top", "random", "bottom"}
    assert (out / "figures" / "targeting_accuracy.png").is_file()
    runs = json.loads((out / "metrics.json").read_text())["runs"]
    assert len(runs) == 2 * 3 * 2  # seeds × sets × rankings
    one = next(r for r in runs.values() if r["label"] == "top3-fisher")
    assert one["method"] == "lora" and one["adapters"]["adapted_layers"] == 3
    assert "Premise test" in (out / "report" / "index.html").read_text()

    # --resume: the warm-ups choose the same matrices, every run is already finished.
    assert main([*args[:3], "--resume", *args[3:]]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "0"], "k: expected an integer >= 1"),
        (["--k", "20"], "more than the 12 adaptable matrices"),
        (["--k", "7"], "need at least 14 adapted matrices"),
        (["--k", "2", "--rank-by", "size"], "rank_by: expected"),
    ],
)
def test_targeting_refuses_bad_input_writing_nothing(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "premise"
    assert main(["targeting", "-o", str(out), *extra, *settings_flags(tiny)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_adaptable_matrices_of_the_tiny_model(tiny):
    cfg = build_config(tiny)
    names = [m.name for m in adaptable_matrices(cfg, 2)]
    assert len(names) == 12 and names[0] == "bert.encoder.layer.0.attention.self.query"
