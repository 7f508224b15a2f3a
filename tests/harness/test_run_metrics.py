"""A run's metrics.json record and its one codec (`fwlora.harness.run_metrics`): a record
read and written back is the same bytes (a real run's, an older run's, one with keys this
version does not know), it reads as typed fields and as the file's mapping, and a file of
another shape is refused naming the field."""

from __future__ import annotations

import json

import pytest

from fwlora.harness import build_config, run_experiment
from fwlora.harness.artefacts import metrics_document
from fwlora.harness.experiment import finished_run, load_experiment
from fwlora.harness.run_metrics import (
    FisherMetrics,
    RunMetrics,
    decode_run,
    encode_run,
    read_run,
    run_text,
    write_run,
)
from tiny import tiny_settings


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec")
    base = build_config(tiny_settings(root), {"epochs": 1, "seed": 3})
    configs = [base.replace(method=m) for m in ("fw-lora", "adalora")]
    return run_experiment(configs, root / "out", n_resamples=100)


def test_a_real_metrics_json_round_trips_byte_for_byte(experiment, tmp_path):
    for name, run_dir in experiment.run_dirs.items():
        written = (run_dir / "metrics.json").read_bytes()
        record = read_run(run_dir / "metrics.json")
        assert isinstance(record, RunMetrics) and record.run == name
        copy = tmp_path / name
        copy.mkdir()
        assert write_run(copy, record).read_bytes() == written
        # The record the run loop returned is the same record, written the same way.
        returned = next(r for r in experiment.runs if r.run == name)
        assert run_text(returned).encode() == written


def test_the_experiments_metrics_json_round_trips(experiment):
    again = load_experiment(experiment.out_dir)
    text = json.dumps(metrics_document(again.runs), indent=2)
    assert text == (experiment.out_dir / "metrics.json").read_text()


def test_a_record_reads_as_typed_fields_and_as_the_files_mapping(experiment):
    fw = finished_run(experiment.run_dirs[experiment.runs[0].run])
    assert fw is not None and fw.method == "fw-lora" and fw.finished
    saved = json.loads((experiment.run_dirs[fw.run] / "metrics.json").read_text())
    assert dict(fw) == saved and fw == saved and list(fw) == list(saved)
    assert isinstance(fw.fisher, FisherMetrics) and fw["fisher"] == saved["fisher"]
    assert fw.fisher.importance == saved["fisher"]["importance"]
    assert fw.fisher.warmup_steps == 4 and fw.best_eval_acc == saved["best_eval_acc"]
    ada = experiment.runs[1]
    assert ada.fisher is None and "final_ranks" in ada["adalora"]
    assert ada.get("no such key") is None and "adalora" in ada and "nope" not in ada


def test_an_older_or_newer_record_keeps_its_keys_as_they_are():
    """Keys an older version did not write stay absent (None as fields); keys this version
    does not know stay where they were."""
    old = {
        "run": "a",
        "status": "complete",
        "label": "lora",
        "method": "lora",
        "seed": 1,
        "final_eval_acc": 1,
        "from_the_future": [1, 2],
        "fisher": {"lam": 0.1},
    }
    record = decode_run(old)
    assert record.final_eval_macro_f1 is None and "final_eval_macro_f1" not in record
    assert record.fisher == FisherMetrics(lam=0.1)
    assert encode_run(record) == old and list(encode_run(record)) == list(old)
    assert json.dumps(encode_run(record)) == json.dumps(old)  # 1 stays 1, not 1.0
    assert decode_run(record) is record


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([], "expected a JSON object, got list"),
        ({"run": "a", "label": "x", "method": "lora"}, "field 'seed' is None, not of its type"),
        (
            {"run": "a", "label": "x", "method": "lora", "seed": True, "final_eval_acc": 1.0},
            "field 'seed' is True, not of its type",
        ),
        (
            {
                "run": "a",
                "label": "x",
                "method": "m",
                "seed": 1,
                "final_eval_acc": 1,
                "epochs": [1],
            },
            "field 'epochs' holds something other than epoch records",
        ),
    ],
)
def test_a_record_of_another_shape_is_refused_by_field(record, message):
    with pytest.raises(ValueError, match=message):
        decode_run(record)


def test_an_unfinished_run_reads_as_none(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"status": "running"}))
    assert read_run(path) is None
    path.write_text("[]")
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        read_run(path)
