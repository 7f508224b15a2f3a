"""Tiny random causal-LM / encoder models and brute-force references for the compatibility tests.

The reference turns `requires_grad` on for every adapted frozen weight W_m, runs each backward
pass, and reads ‖W_m.grad‖²_F directly (summed over the backward passes of one step): nothing
is shared with the package's statistic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from fwlora import FisherAdamW

# One memory measurement for this regression test and benches/bench_memory.py.
sys.path.append(str(Path(__file__).resolve().parents[1] / "benches"))
from common import bytes_alive_after  # noqa: F401  (re-exported for the tests)

VOCAB = 64
SEQ = 10
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    *,
    layers: int = 2,
    hidden: int = 32,
    targets: Sequence[str] = LLAMA_TARGETS,
    tie: bool = False,
    lora_dropout: float = 0.0,
    vocab: int = VOCAB,
    **lora_kwargs,
):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        use_cache=False,
    )
    base = LlamaForCausalLM(config)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=8,
        lora_dropout=lora_dropout,
        target_modules=list(targets),
        init_lora_weights=False,  # B random too: every gradient non-trivial from step 1
        **lora_kwargs,
    )
    return get_peft_model(base, lora).to(dtype)


def tiny_gpt2(
    seed: int = 0, dtype: torch.dtype = torch.float64, targets=("c_attn", "c_proj", "c_fc")
):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )
    base = GPT2LMHeadModel(config)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=list(targets),
        fan_in_fan_out=True,
        init_lora_weights=False,
    )
    return get_peft_model(base, lora).to(dtype)


def tiny_albert(seed: int = 0, dtype: torch.dtype = torch.float64, layers: int = 4):
    """ALBERT: one transformer layer shared by all `layers` layers (called `layers` times)."""
    from transformers import AlbertConfig, AlbertForSequenceClassification

    torch.manual_seed(seed)
    config = AlbertConfig(
        vocab_size=VOCAB,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        num_labels=2,
    )
    base = AlbertForSequenceClassification(config)
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["query", "key", "value", "ffn", "ffn_output"],
        init_lora_weights=False,
    )
    return get_peft_model(base, lora).to(dtype)


def lm_batches(n: int, batch_size: int = 3, seq: int = SEQ, seed: int = 1) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (batch_size, seq), generator=gen)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def cls_batches(n: int, batch_size: int = 3, seq: int = SEQ, seed: int = 1) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (batch_size, seq), generator=gen)
        labels = torch.randint(0, 2, (batch_size,), generator=gen)
        out.append({"input_ids": ids, "labels": labels})
    return out


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def reference_sq_norms(
    model: nn.Module,
    passes: Sequence[Callable[[], torch.Tensor]],
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Σ over backward passes of ‖∂L_b/∂W_m‖²_F, read from W_m.grad with W_m trainable."""
    layers = [(n, m) for n, m in lora_layers(model) if names is None or n in names]
    weights = {n: m.get_base_layer().weight for n, m in layers}
    for w in weights.values():
        w.requires_grad_(True)
    totals = dict.fromkeys(weights, 0.0)
    try:
        for loss_fn in passes:
            for w in weights.values():
                w.grad = None
            loss_fn().backward()
            for n, w in weights.items():
                totals[n] += 0.0 if w.grad is None else w.grad.double().pow(2).sum().item()
    finally:
        for w in weights.values():
            w.requires_grad_(False)
            w.grad = None
        model.zero_grad(set_to_none=True)
    return totals


def fisher_sq_norms(
    model: nn.Module, passes: Sequence[Callable[[], torch.Tensor]], **options
) -> dict[str, float]:
    """g_m of one FisherAdamW step over `passes` (lr 0: the model does not change)."""
    opt = FisherAdamW(model, lr=0.0, weight_decay=0.0, warmup=3, alpha=0.5, **options)
    opt.zero_grad(set_to_none=True)
    for loss_fn in passes:
        loss_fn().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    g = {name: 2.0 * f for name, f in opt.fisher.items()}  # F = (1 - α)·g after one step
    opt.fisher_weighting.detach()
    return g


def assert_close_dicts(actual: dict, expected: dict, rel: float = 1e-9) -> None:
    assert list(actual) == list(expected)
    for name in expected:
        a, e = actual[name], expected[name]
        assert e > 0.0, f"reference gradient of {name} is 0: the test would prove nothing"
        assert abs(a - e) <= rel * abs(e), f"{name}: FW-LoRA {a!r} vs reference {e!r}"


def shared_llama(calls: int, seed: int = 0, dtype: torch.dtype = torch.float64, **kwargs):
    """A tiny Llama whose one decoder layer (with LoRA) is called `calls` times per forward."""
    model = tiny_llama(seed, dtype, layers=1, **kwargs)
    inner = model.base_model.model.model
    inner.layers = nn.ModuleList([inner.layers[0]] * calls)
    config = model.base_model.model.config
    config.num_hidden_layers = calls
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[0]] * calls
    return model


def quantized_llama(bits: int, seed: int = 0):
    """(QLoRA model, float reference): a tiny float32 Llama whose adapted linears are
    bitsandbytes 4-bit (nf4) or 8-bit layers, and the same model with each quantized base
    replaced by a float nn.Linear holding its dequantized weight (same LoRA factors)."""
    import bitsandbytes as bnb
    from peft.utils.integrations import dequantize_bnb_weight
    from transformers import LlamaConfig, LlamaForCausalLM

    def build():
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            use_cache=False,
        )
        return LlamaForCausalLM(config)

    base = build()
    for name, module in list(base.named_modules()):
        if not (isinstance(module, nn.Linear) and name.split(".")[-1] in LLAMA_TARGETS):
            continue
        w = module.weight.data.clone()
        if bits == 4:
            q = bnb.nn.Linear4bit(
                module.in_features,
                module.out_features,
                bias=False,
                compute_dtype=torch.float32,
                quant_type="nf4",
            )
            q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")
        else:
            q = bnb.nn.Linear8bitLt(
                module.in_features,
                module.out_features,
                bias=False,
                has_fp16_weights=False,
                threshold=0.0,
            )
            q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        parent, child = name.rsplit(".", 1)
        setattr(base.get_submodule(parent), child, q.to("cpu"))
    # What from_pretrained(..., quantization_config=BitsAndBytesConfig(...)) sets: peft then
    # wraps the layers in its bnb LoRA classes.
    setattr(base, f"is_loaded_in_{bits}bit", True)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=LLAMA_TARGETS,
        init_lora_weights=False,
    )
    qmodel = get_peft_model(base, lora)

    fbase = build()
    fmodel = get_peft_model(fbase, lora)
    fmodel.load_state_dict(
        {k: v for k, v in qmodel.state_dict().items() if "lora_" in k}, strict=False
    )
    for (_, qlayer), (_, flayer) in zip(lora_layers(qmodel), lora_layers(fmodel)):
        qbase = qlayer.get_base_layer()
        state = getattr(qbase, "state", None) if bits == 8 else None
        w = dequantize_bnb_weight(qbase.weight, state=state).float()
        flayer.get_base_layer().weight.data.copy_(w)
    return qmodel, fmodel
