"""Issue 9, items 3, 5, 6: LoRA variants, quantized (QLoRA) layers, Embedding / Conv targets,
and the `exclude=` option of find_adapter_matrices."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from compat_models import (
    assert_close_dicts,
    fisher_sq_norms,
    lm_batches,
    lora_layers,
    quantized_llama,
    reference_sq_norms,
    tiny_gpt2,
    tiny_llama,
)
from fwlora import FisherAdamW, find_adapter_matrices


def _variant_model(**lora_kwargs):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_cache=False,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **lora_kwargs)
    return get_peft_model(LlamaForCausalLM(config), lora)


def _variants():
    from peft.tuners.lora.config import KasaConfig

    return [
        pytest.param({"use_dora": True}, "DoraLinearVariant", id="dora"),
        pytest.param({"kasa_config": KasaConfig()}, "KasaLinearVariant", id="kasa"),
        pytest.param({"init_lora_weights": "mica"}, "MiCALinearVariant", id="mica"),
        pytest.param({"alora_invocation_tokens": [5, 6]}, "ALoraLinearVariant", id="alora"),
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")  # peft's own notes on some variants
@pytest.mark.parametrize(("kwargs", "variant"), _variants())
def test_every_lora_variant_is_refused_by_name(kwargs, variant):
    model = _variant_model(**kwargs)
    with pytest.raises(ValueError, match=rf"q_proj uses the LoRA variant {variant}.*exclude="):
        FisherAdamW(model, warmup=2)


def test_rslora_with_rank_and_alpha_patterns_is_exact():
    model = tiny_llama(use_rslora=True, rank_pattern={"q_proj": 2}, alpha_pattern={"down_proj": 3})
    batch = lm_batches(1)[0]
    passes = [lambda: model(**batch).loss]
    assert_close_dicts(fisher_sq_norms(model, passes), reference_sq_norms(model, passes))


def test_lora_dropout_is_exact_for_the_same_mask():
    model = tiny_llama(lora_dropout=0.3)
    model.train()
    batch = lm_batches(1)[0]

    def loss():
        torch.manual_seed(7)  # the same dropout masks in both passes
        return model(**batch).loss

    assert_close_dicts(fisher_sq_norms(model, [loss]), reference_sq_norms(model, [loss]))


def test_gpt2_conv1d_fan_in_fan_out_is_exact():
    model = tiny_gpt2()
    batch = lm_batches(1)[0]
    passes = [lambda: model(**batch).loss]
    assert_close_dicts(fisher_sq_norms(model, passes), reference_sq_norms(model, passes))


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_bitsandbytes_layers_measure_the_dequantized_weight_gradient(bits):
    qmodel, fmodel = quantized_llama(bits)
    kinds = {type(m).__name__ for _, m in lora_layers(qmodel)}
    assert kinds == {"Linear4bit" if bits == 4 else "Linear8bitLt"}
    batch = lm_batches(1)[0]
    got = fisher_sq_norms(qmodel, [lambda: qmodel(**batch).loss])
    expected = reference_sq_norms(fmodel, [lambda: fmodel(**batch).loss])
    # float32 models, and the 8-bit matmul rounds its input: agreement to float32 noise.
    assert_close_dicts(got, expected, rel=1e-4)


@pytest.mark.parametrize(
    "cls_path", ["gptq.GPTQLoraLinear", "awq.AwqLoraLinear", "aqlm.AqlmLoraLinear"]
)
def test_other_quantized_lora_wrappers_are_exact_around_a_float_base(cls_path):
    """peft's GPTQ / AWQ / AQLM LoRA wrappers (their quantized kernels are not installable
    here) around a float base layer: their forward is base(x) + s·B·A·x like lora.Linear's."""
    import importlib

    module_name, cls_name = cls_path.split(".")
    cls = getattr(importlib.import_module(f"peft.tuners.lora.{module_name}"), cls_name)
    model = tiny_llama(targets=["q_proj"])
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False)
    for name, layer in lora_layers(model):
        wrapped = cls(layer.get_base_layer(), "default", config=config, r=4, lora_alpha=8)
        wrapped = wrapped.double()
        for factor in ("lora_A", "lora_B"):
            weight = getattr(wrapped, factor)["default"].weight
            weight.data.copy_(getattr(layer, factor)["default"].weight.data)
            weight.requires_grad_(True)
        parent_name, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), child, wrapped)
    assert [type(m).__name__ for _, m in lora_layers(model)] == [cls_name] * 2
    batch = lm_batches(1)[0]
    passes = [lambda: model(**batch).loss]
    assert_close_dicts(fisher_sq_norms(model, passes), reference_sq_norms(model, passes))


@pytest.mark.parametrize("pad", [None, 0])
def test_embedding_lora_is_exact(pad):
    model = tiny_llama(targets=["embed_tokens", "q_proj", "down_proj"])
    embed = model.base_model.model.model.embed_tokens.base_layer
    embed.padding_idx = pad
    batch = lm_batches(1)[0]
    batch["input_ids"][:, :3] = 0  # repeated ids (and the padding row when pad = 0)
    names = [m.name for m in find_adapter_matrices(model)]
    assert names[0].endswith("embed_tokens")
    passes = [lambda: model(**batch).loss]
    assert_close_dicts(fisher_sq_norms(model, passes), reference_sq_norms(model, passes))


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


def _conv_lora():
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["conv", "head"], init_lora_weights=False)
    return get_peft_model(_ConvNet(), config).double()


def test_conv2d_target_is_refused_with_the_way_out():
    model = _conv_lora()
    with pytest.raises(ValueError, match=r"conv is peft\.tuners\.lora\.layer\.Conv2d.*exclude=\["):
        FisherAdamW(model, warmup=2)


def test_exclude_leaves_matching_layers_out():
    model = _conv_lora()
    names = [m.name for m in find_adapter_matrices(model, exclude=["conv"])]
    assert names == ["base_model.model.head"]
    assert [m.name for m in find_adapter_matrices(model, exclude="*.conv")] == names
    assert [m.name for m in find_adapter_matrices(model, exclude=["re:.*\\.co.v"])] == names
    llama = tiny_llama()
    kept = find_adapter_matrices(llama, exclude=["re:.*layers\\.1\\..*", "gate_proj"])
    assert len(kept) == 6 and not any("layers.1." in m.name or "gate" in m.name for m in kept)


@pytest.mark.parametrize(
    ("exclude", "match"),
    [
        (["no_such_module"], r"exclude: \['no_such_module'\] match no LoRA layer"),
        ([3], "exclude: expected module names or patterns"),
        (["re:("], "exclude: 're:\\(' is not a valid regular expression"),
        (["*"], "no LoRA layers found outside `exclude`"),
    ],
)
def test_exclude_bad_values_are_named(exclude, match):
    with pytest.raises(ValueError, match=match):
        find_adapter_matrices(tiny_llama(targets=["q_proj"]), exclude=exclude)


def test_fisher_adamw_threads_exclude_and_trains_excluded_factors_as_plain_lora():
    """Needs the lead's wiring of `exclude` through FisherAdamW / FisherWeighting."""
    model = _conv_lora()
    opt = FisherAdamW(model, lr=1e-2, warmup=1, exclude=["conv"])
    assert list(opt.fisher) == ["base_model.model.head"]
    conv_a = model.base_model.model.conv.lora_A["default"].weight
    before = conv_a.detach().clone()
    opt.zero_grad()
    model(torch.randn(2, 3, 8, 8, dtype=torch.float64)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(conv_a, before)  # still trained, by AdamW


def test_adalora_is_refused():
    from peft import AdaLoraConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    ada = AdaLoraConfig(init_r=4, target_r=2, target_modules=["q_proj"], total_step=10)
    model = get_peft_model(LlamaForCausalLM(config), ada)
    with pytest.raises(ValueError, match="q_proj is an AdaLoRA layer"):
        FisherAdamW(model, warmup=2)
