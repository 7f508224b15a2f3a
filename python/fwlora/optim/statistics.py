"""‖∂L/∂W_m‖²_F of frozen weights, from the ordinary backward pass, without their gradients.

For a linear layer y = x Wᵀ (+ b), ∂L/∂W = Gᵀ X with G = ∂L/∂y and X = x, both flattened
to (tokens, features). A forward hook on each LoRA layer keeps a reference to its input
(autograd keeps that tensor anyway for lora_A's gradient when lora_dropout is 0) and puts a
tensor hook on its output; peft's output is base(x) + LoRA(x), so the gradient reaching it is
exactly G. The statistic is computed there and then, one layer at a time, so at most one
layer's (out × in) weight gradient is ever materialised, and the backbone keeps
`requires_grad=False` (no weight gradients are stored, clipped or all-reduced).

Estimators:
  * ``exact`` – ‖Gᵀ X‖²_F, through whichever is cheaper: the (out × in) product, or the Gram
    identity ‖GᵀX‖² = ⟨G Gᵀ, X Xᵀ⟩ when tokens < in·out / (in + out). Exact either way.
  * ``sketch`` – (1/k)·‖Gᵀ (X Ω)‖²_F with Ω an (in × k) standard Gaussian, fresh every step
    (seeded by the step, so runs and resumes are reproducible). Unbiased, E = ‖GᵀX‖²; costs
    tokens·k·(in + out) instead of tokens·in·out (about 2 % of exact at k = 8 on
    roberta-base); the EMA averages its noise over the warm-up.

Statistics of one optimizer step are summed over its backward passes (gradient
accumulation: the sum of the micro-batch statistics) and kept on the device; the optimizer
moves them to the Rust core in batches, so no step waits on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.hooks import RemovableHandle

from fwlora.optim.targets import AdapterMatrix

ESTIMATORS = ("exact", "sketch")


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def exact_sq_norm(grad_out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """‖Gᵀ X‖²_F (float32, float64 for float64 inputs) for G (tokens × out), X (tokens × in)."""
    tokens, out_f = grad_out.shape
    in_f = inputs.shape[1]
    if tokens * (in_f + out_f) < in_f * out_f:
        gram_g = grad_out @ grad_out.T
        gram_x = inputs @ inputs.T
        acc = _acc_dtype(gram_g)
        return torch.sum(gram_g.to(acc) * gram_x.to(acc))
    weight_grad = grad_out.T @ inputs
    return torch.linalg.vector_norm(weight_grad, dtype=_acc_dtype(weight_grad)).square()


def sketch_sq_norm(
    grad_out: torch.Tensor, inputs: torch.Tensor, omega: torch.Tensor
) -> torch.Tensor:
    """(1/k)·‖Gᵀ (X Ω)‖²_F, an unbiased estimate of ‖Gᵀ X‖²_F."""
    projected = grad_out.T @ (inputs @ omega)  # (out × k)
    norm = torch.linalg.vector_norm(projected, dtype=_acc_dtype(projected))
    return norm.square() / omega.shape[1]


class GradientStatistics:
    """Hooks that collect g_m = ‖∂L/∂W_m‖²_F for every adapted matrix, per optimizer step."""

    def __init__(
        self,
        matrices: list[AdapterMatrix],
        estimator: str = "exact",
        sketch_dim: int = 8,
        seed: int = 0,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {estimator!r}")
        if sketch_dim < 1:
            raise ValueError(f"sketch_dim: expected an integer >= 1, got {sketch_dim}")
        self.matrices = matrices
        self.estimator = estimator
        self.sketch_dim = sketch_dim
        self.seed = seed
        self.step = 0  # the optimizer step whose backward passes are being observed
        self._pending: list[torch.Tensor | None] = [None] * len(matrices)
        self._handles: list[RemovableHandle] = []
        self._omegas: dict[tuple, torch.Tensor] = {}

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self._handles:
            return
        for index, matrix in enumerate(self.matrices):
            self._handles.append(matrix.module.register_forward_hook(self._forward_hook(index)))

    def detach(self) -> None:
        """Removes every hook: no cost at all on later forward and backward passes."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._omegas.clear()
        self.reset()

    def reset(self) -> None:
        self._pending = [None] * len(self.matrices)

    def take_row(self, device: torch.device) -> torch.Tensor:
        """This step's statistics as a float64 (M,) tensor on `device` (0 where unseen)."""
        zero = torch.zeros((), dtype=torch.float64, device=device)
        row = torch.stack(
            [zero if v is None else v.to(device, torch.float64) for v in self._pending]
        )
        self.reset()
        return row

    def _forward_hook(self, index: int) -> Callable:
        matrix = self.matrices[index]

        def hook(module, args, output):
            # A deep copy of the model carries this hook along; it must not report here.
            if module is not matrix.module:
                return
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor)):
                return
            if not output.requires_grad:
                return
            inputs = args[0]
            output.register_hook(lambda grad: self._on_grad(index, matrix, inputs, grad))

        return hook

    def _omega(self, in_features: int, inputs: torch.Tensor) -> torch.Tensor:
        key = (in_features, inputs.device, inputs.dtype, self.step)
        omega = self._omegas.get(key)
        if omega is None:
            # Keep only this step's matrices; fresh Ω per step, reproducible from the step.
            self._omegas = {k: v for k, v in self._omegas.items() if k[3] == self.step}
            gen = torch.Generator(device=inputs.device)
            gen.manual_seed(self.seed * 1_000_003 + self.step * 7919 + in_features)
            omega = torch.randn(
                in_features, self.sketch_dim, generator=gen, device=inputs.device
            ).to(inputs.dtype)
            self._omegas[key] = omega
        return omega

    @torch.no_grad()
    def _on_grad(self, index: int, matrix: AdapterMatrix, inputs: torch.Tensor, grad: torch.Tensor):
        # The first backward after zero_grad(set_to_none=True) starts a new optimizer step:
        # drop anything left from a step the optimizer never took (e.g. skipped by GradScaler).
        if matrix.lora_B.grad is None and matrix.lora_A.grad is None:
            self._pending[index] = None
        g = grad.reshape(-1, grad.shape[-1])
        if g.dtype == torch.float16:
            # fp16 (scaled by a GradScaler) overflows in G Gᵀ or Gᵀ X long before the LoRA
            # gradients do; bf16 has fp32's range. One layer at a time, so the copy is small.
            g = g.float()
        x = inputs.reshape(-1, inputs.shape[-1]).to(g.dtype)
        if self.estimator == "exact":
            value = exact_sq_norm(g, x)
        else:
            value = sketch_sq_norm(g, x, self._omega(matrix.in_features, x))
        previous = self._pending[index]
        self._pending[index] = value if previous is None else previous + value
