"""Memory of FW-LoRA's warm-up vs plain LoRA on a causal LM, with and without checkpointing.

    python benches/bench_memory.py [--quick]

Model: a 4-layer Llama (hidden 128, FFN 256, random weights, fp32) with LoRA (r = 8) on
q, k, v, o, gate, up, down; one batch of 8 × 256 tokens. Per case:
  * live after forward: bytes of the tensors one forward creates that are still alive when it
    returns (autograd's saved activations plus anything a hook keeps; `common.bytes_alive_after`,
    weak references to every op's output storage; the same on CPU and GPU);
  * step peak: tensors allocated during a whole step (forward, backward, optimizer step)
    above those live before it (`common.peak_step_bytes`).
Under non-reentrant gradient checkpointing (transformers' and trl's default) the warm-up must
keep checkpointing's saving: at most one adapted layer's input above plain LoRA after forward.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from common import bytes_alive_after, device, md_table, peak_step_bytes, suffix, target, write
from fwlora import FisherAdamW
from models import tiny

LAYERS, HIDDEN, FFN, VOCAB = 4, 128, 256, 1000
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NEVER = 10**9  # warm-up that never ends: every step is a warm-up step


def build(dev: torch.device, checkpointing: bool):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        use_cache=False,
    )
    with torch.device(dev):
        base = LlamaForCausalLM(config)
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=TARGETS)
    model = get_peft_model(base, lora)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def measure_case(method: str, checkpointing: bool, dev, batch: int, seq: int) -> dict:
    model = build(dev, checkpointing)
    if method == "lora":
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    else:
        opt = FisherAdamW(model, lr=1e-4, warmup=NEVER, estimator=method.split("-")[-1])
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=gen).to(dev)
    data = {"input_ids": ids, "labels": ids}

    def step() -> None:
        model(**data).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # lazy optimizer state
    alive, loss = bytes_alive_after(lambda: model(**data).loss)
    loss.backward()
    opt.zero_grad(set_to_none=True)
    del loss
    peak, how = peak_step_bytes(step, dev)
    return {"alive_after_forward": alive, "step_peak": peak, "peak_method": how}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 × 64 tokens instead of 8 × 256")
    args = parser.parse_args(argv)
    dev = device()
    batch, seq = (4, 16) if tiny() else (8, 64 if args.quick else 256)  # tiny: gpu.sh --dry-run
    methods = ["lora", "fw-warmup-exact", "fw-warmup-sketch"]
    results = {
        ckpt: {m: measure_case(m, ckpt == "checkpointing", dev, batch, seq) for m in methods}
        for ckpt in ("checkpointing", "no checkpointing")
    }
    layer_input = batch * seq * FFN * 4  # down_proj's input, fp32: the largest adapted input
    rows, targets = [], []
    labels = {
        "lora": "plain LoRA + AdamW",
        "fw-warmup-exact": "FW-LoRA warm-up, exact",
        "fw-warmup-sketch": "FW-LoRA warm-up, sketch (k = 8)",
    }
    for ckpt, cases in results.items():
        plain = cases["lora"]
        for m in methods:
            c = cases[m]
            extra = (c["alive_after_forward"] - plain["alive_after_forward"]) / 2**20
            peak = "n/a" if c["step_peak"] is None else f"{c['step_peak'] / 2**20:.2f}"
            rows.append(
                [ckpt, labels[m], f"{c['alive_after_forward'] / 2**20:.2f}", f"{extra:+.2f}", peak]
            )
            if m != "lora":
                targets.append(
                    target(
                        f"live after forward, {labels[m]} − plain LoRA ({ckpt})",
                        extra,
                        layer_input / 2**20,
                        unit=" MiB",
                    )
                )
    table = md_table(
        ["checkpointing", "method", "live after forward MiB", "− plain LoRA MiB", "step peak MiB"],
        rows,
    )
    method = results["checkpointing"]["lora"]["peak_method"]
    table += (
        f"\n\nModel: Llama, {LAYERS} layers, hidden {HIDDEN}, FFN {FFN}, LoRA r = 8 on 7 targets,"
        f" batch {batch} × {seq} tokens, fp32, device {dev.type}. Live after forward: storages"
        " created by the forward and alive after it (weak references, every op's outputs)."
        f" Step peak: {method}. Limit: one adapted layer's input ({layer_input / 2**20:.2f} MiB,"
        " down_proj's).\n"
    )
    from common import target_line

    table += "\n" + "\n".join(target_line(t) for t in targets)
    payload = {
        "results": results,
        "layer_input_bytes": layer_input,
        "targets": targets,
        "batch": batch,
        "seq": seq,
    }
    write(f"memory{suffix(dev)}", payload, table)
    return payload


if __name__ == "__main__":
    main()
