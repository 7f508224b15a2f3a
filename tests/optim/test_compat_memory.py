"""Issue 9, item 7: warm-up keeps gradient checkpointing's memory saving.

Bytes of the tensors created by one forward that are still alive after it (what backward
will need), FW-LoRA warm-up vs plain LoRA, under non-reentrant checkpointing: the statistic's
saved inputs are dropped and recomputed with the layer's own activations.
"""

from __future__ import annotations

import pytest
import torch

from compat_models import bytes_alive_after, lm_batches, tiny_llama
from fwlora import FisherAdamW

LAYERS, HIDDEN, BATCH, SEQ = 3, 64, 4, 64


def _alive_after_forward(fisher: bool, checkpointing: bool) -> int:
    model = tiny_llama(0, torch.float32, layers=LAYERS, hidden=HIDDEN)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = lm_batches(1, batch_size=BATCH, seq=SEQ)[0]
    opt = FisherAdamW(model, lr=0.0, warmup=5) if fisher else None
    alive, loss = bytes_alive_after(lambda: model(**batch).loss)
    loss.backward()  # the forward was real: backward must still work
    if opt is not None:
        opt.step()
        assert all(v > 0 for v in opt.fisher.values())
    return alive


@pytest.mark.parametrize("checkpointing", [True, False])
def test_warmup_holds_at_most_one_layer_input_more_than_plain_lora(checkpointing):
    plain = _alive_after_forward(False, checkpointing)
    fisher = _alive_after_forward(True, checkpointing)
    largest_input = BATCH * SEQ * 2 * HIDDEN * 4  # down_proj's input, float32
    assert plain > 0
    assert fisher - plain <= largest_input, (plain, fisher)
