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
    combine,
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
    with pytest.raises(
        HarnessError, match=r"no size-matched random draw of 4 matrices .*closest had"
    ):
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
    shifts = {"top": 0.05, "type": 0.049, "layer": 0.03, "bottom": 0.0}
    for s in seeds:
        base = 0.6 + 0.01 * s
        shifts["random"] = 0.02 + 0.005 * rng.random()
        shifts["type"] = 0.05 + 0.001 * (-1) ** s
        for which in ("top", "random", "type", "layer", "bottom"):
            acc = base + shifts[which]
            runs.append(_fake_run(f"{which}2-fisher", s, acc))
    doc = analyse(plan, runs, margin=0.01)
    section = doc["rankings"]["fisher"]
    assert section["seeds_complete"] == seeds
    comps = section["comparisons"]
    bottom = comps["top_minus_bottom"]["acc"]
    assert bottom["mean_difference"] == pytest.approx(0.05)
    assert bottom["verdict"] == "different" and bottom["family_size"] == 4
    random = comps["top_minus_random"]["acc"]
    assert random["mean_difference"] > 0.02 and random["verdict"] == "different"
    assert random["ci_low"] < random["mean_difference"] < random["ci_high"]
    # TOP and TYPE differ by ±0.001: inside the margin, equivalent.
    assert comps["top_minus_type"]["acc"]["verdict"] == "equivalent"
    assert comps["top_minus_type"]["macro_f1"]["n"] == 4
    assert section["top_same_every_seed"] is True
    assert doc["ranking_stability"]["spearman_vs_first_seed"]["2"] == pytest.approx(1.0)
    record = doc["per_seed"][0]["rankings"]["fisher"]["arms"]["top"]
    assert record["steps"] == 10 and record["confusion_matrix"] == [[1, 0], [0, 1]]
    # An unfinished seed is left out of the tests, and said so.
    doc = analyse(plan, runs[:-1])
    assert doc["rankings"]["fisher"]["seeds_complete"] == [1, 2, 3]
    assert doc["rankings"]["fisher"]["comparisons"]["top_minus_bottom"]["acc"]["n"] == 3


def _fake_run(label: str, seed: int, acc: float) -> dict:
    return {
        "label": label,
        "seed": seed,
        "run": f"{label}-seed{seed}",
        "total_steps": 10,
        "adapters": {"trainable_params": 100},
        "final_eval_acc": acc,
        "final_eval_macro_f1": acc - 0.1,
        "final_eval_recall": [acc, acc],
        "final_confusion_matrix": [[1, 0], [0, 1]],
    }


def test_parts_of_one_experiment_combine_into_one_document():
    matrices = _matrices()
    fisher = {m.name: float(i) for i, m in enumerate(matrices)}
    docs = []
    for part in ([1, 2], [3, 4]):
        draws = {(s, "fisher"): choose_sets(fisher, matrices, 2, 4, s) for s in part}
        plan = Plan(2, ["fisher"], matrices, {s: fisher for s in part}, draws, [])
        runs = [
            _fake_run(f"{w}2-fisher", s, 0.6 + 0.01 * s + (0.05 if w == "top" else 0.0))
            for s in part
            for w in ("top", "random", "type", "layer", "bottom")
        ]
        docs.append(json.loads(json.dumps(analyse(plan, runs))))
    whole = combine(docs)
    assert whole["seeds"] == [1, 2, 3, 4] and whole["parts"] == 2
    assert whole["rankings"]["fisher"]["comparisons"]["top_minus_layer"]["acc"]["n"] == 4
    docs[1]["per_seed"][0]["fisher"] = {n: 0.0 for n in fisher}
    docs[1]["per_seed"][0]["seed"] = 1
    with pytest.raises(HarnessError, match="seed 1 has different warm-ups"):
        combine(docs)


def test_type_and_layer_controls_match_top():
    matrices = _matrices()
    # TOP-3 = layer 1's FFN pair and its value matrix.
    fisher = {m.name: 0.0 for m in matrices}
    for i, name in enumerate(
        [
            "encoder.layer.1.intermediate.dense",
            "encoder.layer.1.output.dense",
            "encoder.layer.1.attention.self.value",
        ]
    ):
        fisher[name] = 10.0 - i
    for seed in range(5):
        draw = choose_sets(fisher, matrices, 3, 4, seed)
        assert where(draw.type)["type"] == where(draw.top)["type"]
        assert where(draw.layer)["layer"] == where(draw.top)["layer"]
        assert draw.params["type"] == draw.params["top"]
        assert abs(draw.params["layer"] - draw.params["top"]) <= 0.05 * draw.params["top"]
        assert len(set(draw.layer)) == 3 and len(set(draw.type)) == 3


def test_a_layer_matched_draw_that_cannot_match_the_budget_is_refused():
    matrices = _matrices()
    # TOP-3 = layer 0's two big matrices and its query: with tolerance 0 a layer-0 draw
    # must repeat that mix, which 3 (seeded) tries do not; the message names the closest.
    fisher = {m.name: 0.0 for m in matrices}
    fisher["encoder.layer.0.intermediate.dense"] = 2.0
    fisher["encoder.layer.0.output.dense"] = 1.5
    fisher["encoder.layer.0.attention.self.query"] = 1.0
    with pytest.raises(HarnessError, match=r"^k: no layer-matched draw of 3 matrices .*closest"):
        choose_sets(fisher, matrices, 3, 4, 1, tolerance=0.0, draws=3)


def test_targeting_command_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "premise"
    flags = settings_flags(tiny, skip=("epochs",))
    args = ["targeting", "-o", str(out), "--k", "3", "--seeds", "1,2", "--epochs", "1"]
    args += ["--rank-by", "fisher,per-weight", *flags]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "TOP − size-matched random" in printed and "ranked by per-weight" in printed
    assert "TOP − type-matched" in printed and "TOP − layer-matched" in printed
    doc = json.loads((out / "targeting.json").read_text())
    assert doc["k"] == 3 and doc["adaptable_matrices"] == 12
    for section in doc["rankings"].values():
        assert section["seeds_complete"] == [1, 2]
    for record in doc["per_seed"]:
        assert len(record["fisher"]) == 12
        for ranking in record["rankings"].values():
            arms = ranking["arms"]
            top = arms["top"]["lora_params"]
            assert abs(arms["random"]["lora_params"] - top) <= 0.05 * top
            assert set(arms) == {"top", "random", "type", "layer", "bottom"}
            for arm in arms.values():
                assert len(arm["set"]) == 3 and arm["finished"]
                assert 0 <= arm["macro_f1"] <= 1 and len(arm["confusion_matrix"]) == 2
    assert (out / "figures" / "targeting_accuracy.png").is_file()
    runs = json.loads((out / "metrics.json").read_text())["runs"]
    assert len(runs) == 2 * 5 * 2  # seeds × arms × rankings
    one = next(r for r in runs.values() if r["label"] == "top3-fisher")
    # Every arm adapts all 12 matrices and trains 3 of them.
    assert one["method"] == "lora" and one["adapters"]["adapted_layers"] == 12
    assert one["adapters"]["extra"]["frozen_adapters"] == 9
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


def test_arms_are_one_model_training_only_their_set(tiny, tmp_path):
    """trainable_modules: every matrix adapted, only the set trains. With every matrix in
    the set the run is bit-identical to plain LoRA; two arms with the same set are
    bit-identical; the frozen adapters stay exactly at their initialisation (B = 0)."""
    import torch

    from fwlora.harness.models import attach_adapters, load_backbone

    base = build_config(tiny, {"method": "lora", "seed": 5, "epochs": 1})
    names = [m.name for m in adaptable_matrices(base, 2)]
    chosen = names[:3]
    configs = [
        base,
        base.replace(variant="all", trainable_modules=names),
        base.replace(variant="arm-a", trainable_modules=chosen),
        base.replace(variant="arm-b", trainable_modules=list(reversed(chosen))),
    ]
    runs = {r["label"]: r for r in run_experiment(configs, tmp_path / "arms").runs}
    assert runs["all"]["train_loss_steps"] == runs["lora"]["train_loss_steps"]
    assert runs["all"]["final_eval_loss"] == runs["lora"]["final_eval_loss"]
    assert runs["arm-a"]["train_loss_steps"] == runs["arm-b"]["train_loss_steps"]
    assert runs["arm-a"]["train_loss_steps"] != runs["lora"]["train_loss_steps"]
    assert runs["arm-a"]["adapters"]["extra"]["frozen_adapters"] == len(names) - 3

    torch.manual_seed(0)
    _, backbone, _ = load_backbone(base, 2)
    model, info = attach_adapters(backbone, configs[2], 10)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert len(trainable) == 2 * 3 and all(any(c in n for c in chosen) for n in trainable)
    shapes = {m.name: m for m in adaptable_matrices(base, 2)}
    assert info.adapter_params == sum(
        4 * (shapes[n].in_features + shapes[n].out_features) for n in chosen
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trainable_modules": ["bert.encoder.layer.9.output.dense"]}, "is not one of the 12"),
        (
            {"method": "fw-lora", "trainable_modules": ["x"]},
            "trainable_modules: freezes adapters of plain LoRA runs only",
        ),
    ],
)
def test_trainable_modules_refuses_what_it_cannot_do(tiny, tmp_path, changes, message):
    with pytest.raises(HarnessError, match=message):
        cfg = build_config(tiny, {"method": "lora", "epochs": 1, **changes})
        run_experiment([cfg], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_targeting_refuses_a_bad_equivalence_margin_writing_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "premise"
    for margin in ("0", "-1", "nan", "inf", "x"):
        args = ["targeting", "-o", str(out), "--k", "2", "--equivalence-margin", margin]
        assert main([*args, *settings_flags(tiny)]) == 2
        err = capsys.readouterr().err
        assert "--equivalence-margin" in err and "finite number > 0" in err
        assert len(err.strip().splitlines()) == 1 or "usage" in err
    assert not out.exists()
