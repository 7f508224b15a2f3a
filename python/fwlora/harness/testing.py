"""A tiny random BERT, its word-level tokenizer and a toy sentiment data set, all built
offline in a second: for the test suite and for smoke-testing the pipeline."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

POSITIVE = ["good", "great", "fine", "happy", "love", "excellent", "nice", "best"]
NEGATIVE = ["bad", "awful", "sad", "hate", "poor", "worst", "terrible", "ugly"]
NEUTRAL = ["the", "a", "movie", "drug", "it", "was", "is", "really", "very", "this"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def toy_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` short sentences; label 1 if positive words dominate (with 10 % label noise)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        cue = POSITIVE if label else NEGATIVE
        words = rng.sample(NEUTRAL, 3) + rng.sample(cue, 2)
        rng.shuffle(words)
        noisy = label if rng.random() > 0.1 else 1 - label
        rows.append({"text": " ".join(words), "label": noisy})
    return pd.DataFrame(rows)


def write_toy_data(directory: Path, n_train: int = 48, n_eval: int = 24) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    train, evaluation = directory / "train.csv", directory / "eval.csv"
    toy_frame(n_train, seed=1).to_csv(train, index=False)
    toy_frame(n_eval, seed=2).to_csv(evaluation, index=False)
    return train, evaluation


def write_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random BertForSequenceClassification with a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + POSITIVE + NEGATIVE + NEUTRAL)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=0,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def tiny_settings(directory: Path) -> dict:
    """Settings for a seconds-long run of the tiny model on the toy data in `directory`."""
    model = directory / "tiny-bert"
    if not (model / "config.json").is_file():
        write_tiny_bert(model)
    train, evaluation = write_toy_data(directory / "toy-data")
    return {
        "model": str(model),
        "task": "file",
        "train_file": str(train),
        "eval_file": str(evaluation),
        "epochs": 2,
        "batch_size": 8,
        "eval_batch_size": 16,
        "max_length": 16,
        "lr": 5e-3,
        "fisher_warmup": 4,
        "rank": 4,
        "quiet": True,
        "device": "cpu",
        "num_threads": 1,  # a 32-wide model: thread hand-offs would cost more than they save
    }
