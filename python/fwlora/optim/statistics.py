"""‖∂L/∂W_m‖²_F of frozen weights, from the ordinary backward pass, without their gradients.

For a linear layer y = x Wᵀ (+ b), ∂L/∂W = Gᵀ X with G = ∂L/∂y and X = x, both flattened
to (tokens, features). A forward hook on each LoRA layer passes its output through an identity
autograd node (`_Observe`) that saves X with ``save_for_backward`` and receives G in backward;
peft's output is base(x) + LoRA(x), so the gradient reaching it is exactly G. X is saved the way
autograd saves any activation, so gradient checkpointing (reentrant or not) drops and
recomputes it like the layer's own activations; without checkpointing it is the tensor
lora_A already saves (when lora_dropout is 0), so no memory is added. The statistic is
computed in backward, one layer at a time, so the backbone keeps `requires_grad=False` (no
weight gradients are stored, clipped or all-reduced).

For an Embedding LoRA layer (W: vocab × dim, y = W[ids]), ∂L/∂W is G scattered onto the rows
of the token ids: ‖∂L/∂W‖² = Σ_v ‖Σ_{t: id_t = v} G_t‖², computed over the distinct ids of the
batch (tokens × dim work; the padding row, which gets no gradient, is left out).

Estimators:
  * ``exact`` – ‖Gᵀ X‖²_F, through whichever is cheaper: the (out × in) product, or the Gram
    identity ‖GᵀX‖² = ⟨G Gᵀ, X Xᵀ⟩ when tokens < in·out / (in + out). Exact either way.
  * ``sketch`` – (1/k)·‖Gᵀ (X Ω)‖²_F with Ω an (in × k) standard Gaussian, fresh every step
    (seeded by the step, so runs and resumes are reproducible). Unbiased, E = ‖GᵀX‖²; costs
    tokens·k·(in + out) instead of tokens·in·out (about 2 % of exact at k = 8 on
    roberta-base); the EMA averages its noise over the warm-up. Embedding layers always use
    the exact statistic (it costs tokens·dim).

Edges. A base layer that is also reachable outside its LoRA layer (another attribute holds
it, so calls through it bypass LoRA) is hooked itself instead of the LoRA layer: peft's LoRA
layer calls it, so every path is seen. A call with grad enabled whose output needs no gradient
(under peft's ``disable_adapter()``, on an input that needs none) is given one through a 0-d
anchor leaf, so the statistic gets its G like W's own gradient would. An input edited in place
between the call and backward (possible where LoRA itself does not keep it, lora_dropout > 0)
cannot be read back: that step's row becomes NaN, which the core leaves out of the EMA, with
one warning. The hook is a picklable object that pickles (and deep-copies) as a no-op.

What one step records. Within one backward pass, ∂L/∂W_m is the *whole* gradient of that
pass: for a module called several times in one forward (shared layers, ALBERT-style; or two
forwards summed into one loss) the squared norm of the summed gradient Σ_c G_cᵀX_c, not the
sum of per-call norms. To pay for that only where needed, the forward calls of each module
that build a graph are counted (under no_grad only those inside a reentrant checkpoint's
forward, which is recomputed in backward; an evaluation or generate() forward is not
counted); a module called more than once since its last backward gets, for that backward
pass, an accumulator of the size of its weight gradient (out × in, float32 or float64; out ×
k for the sketch) that the calls' GᵀX are added to and whose squared norm is taken when the
pass ends. Other modules take the cheap per-call path. A backward pass is one autograd graph
task (the outermost one: reentrant checkpointing's nested backward passes belong to the pass
that recomputes them). Only torch.utils.checkpoint's reentrant forward is recognised: another
library's reentrant checkpointing (recomputing a no_grad forward in backward) would leave a
module called several times in it on the per-call path (Σ_c‖G_cᵀX_c‖²).

Several backward passes in one optimizer step (gradient accumulation):
  * ``accumulation_steps`` > 1: every matrix keeps its accumulator across the step's passes
    (out × in, vocab × dim for an Embedding; out × k for the sketch, whose Ω is fixed for the
    step), so g_m = ‖Σ_b ∂L_b/∂W_m‖²_F, the squared norm of the step's accumulated weight
    gradient: independent of how the batch is split.
  * ``accumulation_steps`` = 1 (default): g_m = Σ_b ‖∂L_b/∂W_m‖²_F, the sum of the per-pass
    statistics, which depends on the split (E Σ_b‖g_b‖² carries a noise term per matrix that
    ‖Σ_b g_b‖² does not); one RuntimeWarning says so, the first time it happens.
  * Under DDP / FSDP2 each rank measures its own gradient and the caller averages the rows over
    ranks (`mean_over_ranks`): the mean of the per-rank statistics, not the statistic of the
    all-reduced gradient.

Statistics of a step the optimizer never took (skipped by a GradScaler) are dropped: the
first gradient a module receives in a backward pass finds its LoRA gradients unset after
``zero_grad(set_to_none=True)`` (torch's default), which starts a new step. Callers that
zero gradients in place can call `drop_step()` from their zero_grad.

Statistics are kept on the device; the optimizer moves them to the Rust core in batches, so
no step waits on the device.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any, cast

import torch
import torch.utils.checkpoint
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.hooks import RemovableHandle

from fwlora.optim.collectives import is_dtensor
from fwlora.optim.options import ESTIMATORS
from fwlora.optim.targets import AdapterMatrix


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
    # Formed as its transpose (X Ω)ᵀ G (k × out), same norm: a plain row-major product
    # instead of one with a transposed (tokens × out) operand; on the benchmark's CPU model
    # the sketch's kernels fell from 0.053× to 0.044× of a step (docs/benchmarks.md).
    projected = (inputs @ omega).T @ grad_out
    norm = torch.linalg.vector_norm(projected, dtype=_acc_dtype(projected))
    return norm.square() / omega.shape[1]


def embedding_rows(
    grad_out: torch.Tensor, ids: torch.Tensor, padding_idx: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct ids, Σ of G's rows per id): the nonzero rows of ∂L/∂W for y = W[ids]."""
    if padding_idx is not None:
        keep = ids != padding_idx
        ids, grad_out = ids[keep], grad_out[keep]
    distinct, inverse = torch.unique(ids, return_inverse=True)
    rows = torch.zeros(
        distinct.shape[0], grad_out.shape[1], dtype=_acc_dtype(grad_out), device=grad_out.device
    )
    rows.index_add_(0, inverse, grad_out.to(rows.dtype))
    return distinct, rows


class _Observe(torch.autograd.Function):
    """Identity on a LoRA layer's output; hands (G, X) to the statistics in backward.

    X goes through ``save_for_backward`` (so checkpointing drops and recomputes it); the output
    is returned in place (``mark_dirty``), so no copy is made and later in-place ops on it
    stay legal.
    """

    @staticmethod
    def forward(
        ctx: Any,
        output: torch.Tensor,
        inputs: torch.Tensor,
        stats: GradientStatistics,
        index: int,
        root: int | None,
        anchor: torch.Tensor | None,
    ) -> torch.Tensor:
        # `anchor` (a 0-d leaf requiring grad, or None) only makes the output require grad
        # when nothing else does; it never gets a gradient.
        ctx.save_for_backward(inputs)
        ctx.stats, ctx.index, ctx.root = stats, index, root
        ctx.mark_dirty(output)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        try:
            (inputs,) = ctx.saved_tensors
        except RuntimeError as exc:
            # The layer's input was edited in place after the call. With lora_dropout > 0
            # nothing else keeps it, so plain LoRA trains: lose the statistic, not the step.
            if "inplace operation" not in str(exc):
                raise
            inputs = None
        ctx.stats._on_grad(ctx.index, inputs, grad, ctx.root)
        return grad, None, None, None, None, None


def _grads_unset(matrix: AdapterMatrix) -> bool:
    """No LoRA gradient yet in this step: neither on the factors found at construction nor on
    the module's current ones (FSDP2 swaps in unsharded parameters for forward and backward and
    keeps gradients accumulated without sync there)."""
    current = matrix.current_factors()
    stored = (matrix.lora_A, matrix.lora_B)
    if not any(is_dtensor(p) for p in stored) and any(c is not s for c, s in zip(current, stored)):
        # The model's factors were replaced since FW-LoRA found them (fully_shard after it was
        # built; adopted at the first optimizer step): the gradients that tell a new step are
        # on parameters not known yet, so none is started. Only statistics of a step skipped
        # by a GradScaler before the first step taken would then count into the next.
        return False
    return all(p.grad is None for p in (*stored, *current))


def _graph_task() -> int:
    """The id of the autograd graph task running on this thread, -1 outside backward."""
    return torch._C._current_graph_task_id()


_REENTRANT_FORWARD = torch.utils.checkpoint.CheckpointFunction.forward.__code__


def _in_reentrant_checkpoint() -> bool:
    """Inside the no_grad forward of ``checkpoint(..., use_reentrant=True)`` whose inputs
    require grad: its calls are recomputed (with a graph) in backward, so they count."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code is _REENTRANT_FORWARD:
            args = frame.f_locals.get("args", ())
            return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        frame = frame.f_back
    return False


def hook_target(matrix: AdapterMatrix) -> nn.Module:
    """The module whose calls the statistic observes: the LoRA layer, or its base layer when
    that is also reachable outside it (calls through the other path bypass LoRA but still
    give W a gradient; peft's LoRA layer calls its base layer, so both paths are seen)."""
    if matrix.base_reachable_outside:
        base: nn.Module = cast(Any, matrix.module).base_layer
        return base
    return matrix.module


class _InertHook:
    """What a pickled (torch.save) or deep-copied model holds in place of `_ForwardHook`:
    its copy must not report to this run's statistics."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        return None


class _ForwardHook:
    """The forward hook of one observed module: a class rather than a closure so that the
    model stays picklable during warm-up (it pickles as `_InertHook`)."""

    def __init__(self, stats: GradientStatistics, index: int) -> None:
        self.stats, self.index = stats, index

    # Opaque to torch.compile: traced, the hook's bookkeeping would specialise the graph on
    # `index` (one recompilation per matrix); run eagerly, it costs one graph break.
    @torch.compiler.disable
    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return self.stats._on_forward(self.index, module, args, kwargs, output)

    def __reduce__(self) -> tuple:
        return (_InertHook, ())


class SketchProjections:
    """The sketch's Gaussian Ω (in × k) per input width: fresh at every optimizer step and
    reproducible from (seed, step, width); only the current step's are kept."""

    def __init__(self, seed: int, sketch_dim: int) -> None:
        self.seed = seed
        self.sketch_dim = sketch_dim
        self._omegas: dict[tuple, torch.Tensor] = {}

    def get(self, in_features: int, inputs: torch.Tensor, step: int) -> torch.Tensor:
        key = (in_features, inputs.device, inputs.dtype, step)
        omega = self._omegas.get(key)
        if omega is None:
            self._omegas = {k: v for k, v in self._omegas.items() if k[3] == step}
            gen = torch.Generator(device=inputs.device)
            gen.manual_seed(self.seed * 1_000_003 + step * 7919 + in_features)
            omega = torch.randn(
                in_features, self.sketch_dim, generator=gen, device=inputs.device
            ).to(inputs.dtype)
            self._omegas[key] = omega
        return omega

    def clear(self) -> None:
        self._omegas.clear()


class GradientStatistics:
    """Hooks that collect g_m = ‖∂L/∂W_m‖²_F for every adapted matrix, per optimizer step.

    Contract with the owner: `attach()` once observing starts; `take_row()` once per optimizer
    step taken (it ends the step and starts the next); `drop_step()` to drop the current
    step's statistics (from zero_grad: forward calls not yet seen in backward are kept);
    `reset()` to drop everything (after loading a state); `detach()` when done.
    After `take_row()`, `last_unseen` lists the indices of matrices that produced no
    statistic in that step (their row entry is 0).

    `accumulation_steps` > 1: the step's backward passes are summed into one weight
    gradient per matrix before its squared norm is taken (see the module docstring).
    Options are validated by `FisherOptions`; here they are only asserted.
    """

    def __init__(
        self,
        matrices: list[AdapterMatrix],
        estimator: str = "exact",
        sketch_dim: int = 8,
        seed: int = 0,
        *,
        accumulation_steps: int = 1,
        step_of: Callable[[], int] | None = None,
    ) -> None:
        assert estimator in ESTIMATORS and estimator != "adapter", estimator
        assert sketch_dim >= 1 and accumulation_steps >= 1, (sketch_dim, accumulation_steps)
        self.matrices = matrices
        self.estimator = estimator
        self.sketch_dim = sketch_dim
        self.seed = seed
        self.accumulation_steps = accumulation_steps
        # Optimizer steps taken so far (the owner's count, read when needed; 0 standalone):
        # seeds each step's sketch, so runs and resumes are reproducible.
        self._step_of = step_of if step_of is not None else (lambda: 0)
        self.last_unseen: list[int] = []
        self.shared: set[int] = set()  # indices ever seen called more than once per pass
        self._pending: list[torch.Tensor | None] = [None] * len(matrices)
        self._handles: list[RemovableHandle] = []
        self._projections = SketchProjections(seed, sketch_dim)
        self._calls = [0] * len(matrices)  # forward calls outside backward not yet seen back
        self._passes = [0] * len(matrices)  # backward passes that reached it in this step
        self._warned_passes = False
        self._root: int | None = None  # graph task of the backward pass being observed
        self._accumulate: dict[int, bool] = {}  # per index seen in this pass: accumulator?
        # Per accumulating index: Σ_c G_cᵀX_c over this pass (over the step's passes when
        # accumulation_steps > 1).
        self._acc: dict[int, torch.Tensor] = {}
        self._queued: set[int] = set()
        self._anchors: dict[torch.device, torch.Tensor] = {}
        # Indices whose saved input was edited in place before backward in this step (their
        # statistic is lost: the step is left out of the EMA, see take_row).
        self._lost: set[int] = set()
        self._warned_lost = False

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self._handles:
            return
        for index, matrix in enumerate(self.matrices):
            self._handles.append(
                hook_target(matrix).register_forward_hook(
                    _ForwardHook(self, index), with_kwargs=True
                )
            )

    def detach(self) -> None:
        """Removes every hook: no cost at all on later forward and backward passes."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._projections.clear()
        self.reset()

    def drop_step(self) -> None:
        """Drops this step's statistics (a zero_grad): keeps the count of forward calls not
        yet seen in backward, so a forward run before zero_grad is still counted right."""
        self._pending = [None] * len(self.matrices)
        self._passes = [0] * len(self.matrices)
        self._lost.clear()
        self._acc.clear()
        self._accumulate.clear()
        self._root = None

    def reset(self) -> None:
        """Drops everything observed since the last `take_row()` (load, detach)."""
        self.drop_step()
        self._calls = [0] * len(self.matrices)

    def take_row(self, device: torch.device) -> torch.Tensor:
        """This step's statistics as a float64 (M,) tensor on `device` (0 where unseen)."""
        self._end_pass()
        self._fold()
        self.last_unseen = [i for i, v in enumerate(self._pending) if v is None]
        zero = torch.zeros((), dtype=torch.float64, device=device)
        row = torch.stack(
            [zero if v is None else v.to(device, torch.float64) for v in self._pending]
        )
        passes = max(self._passes, default=0)
        if self._lost:
            row = self._mark_lost(row)
        self.reset()
        if passes > 1 and self.accumulation_steps == 1 and not self._warned_passes:
            self._warned_passes = True
            warnings.warn(
                f"FW-LoRA: {passes} backward passes in one optimizer step (gradient "
                "accumulation?): g_m is the sum of the per-pass ‖∂L_b/∂W_m‖², not "
                "‖∂L/∂W_m‖² of the accumulated gradient, so importances depend on how the "
                "batch is split. Pass accumulation_steps=N (FisherCallback does this for the "
                "Trainer) for the exact statistic (costs an out × in buffer per matrix during "
                "warm-up; estimator='sketch': out × k)",
                RuntimeWarning,
                stacklevel=4,
            )
        return row

    def _mark_lost(self, row: torch.Tensor) -> torch.Tensor:
        """NaN where a saved input was edited in place (so the core leaves the whole step
        out of the EMA, as any non-finite step); one warning naming the cause."""
        lost = sorted(self._lost)
        row = row.index_fill(0, torch.tensor(lost, device=row.device), float("nan"))
        if not self._warned_lost:
            self._warned_lost = True
            names = ", ".join(self.matrices[i].name for i in lost[:3])
            warnings.warn(
                f"FW-LoRA: the input of {names}{', ...' if len(lost) > 3 else ''} was "
                "modified in place after the layer used it, before backward; the warm-up "
                "statistic needs that input (with lora_dropout > 0 LoRA itself does not keep "
                "it), so this step is left out of the Fisher EMA (and any other step where "
                "it happens). Edit a copy instead (x = x * 2, not x.mul_(2); or x.clone() "
                "before the edit) to have every warm-up step measured",
                RuntimeWarning,
                stacklevel=5,
            )
        return row

    # ------------------------------------------------------------------ hooks
    def _on_forward(
        self, index: int, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> Any:
        """The forward hook's work (see `_ForwardHook`): counts the call and, when it builds
        a graph, puts the `_Observe` node on its output."""
        # A deep copy of the model carries an inert hook (see _ForwardHook.__reduce__).
        # After detach() a graph compiled with the hook in it may still call it: no-op.
        if module is not hook_target(self.matrices[index]) or not self._handles:
            return None
        task = _graph_task()
        inputs = args[0] if args else kwargs.get("x", kwargs.get("input"))
        # With grad enabled every call counts, whether its output requires grad or not: a
        # call under peft's disable_adapter() (or a base layer called outside its LoRA
        # layer) on an input that needs no gradient still gives W a gradient.
        observed = (
            torch.is_grad_enabled()
            and isinstance(output, torch.Tensor)
            and output.is_floating_point()
            and isinstance(inputs, torch.Tensor)
        )
        if task == -1 and (
            observed or (not torch.is_grad_enabled() and _in_reentrant_checkpoint())
        ):
            # A call that will send a gradient back. Reentrant checkpointing runs the
            # forward that decides the call count under no_grad and recomputes it inside
            # backward (not counted there); an evaluation forward is not counted.
            self._calls[index] += 1
        if not observed:
            return None
        root = None
        if task != -1:
            # Recomputed inside a backward pass (checkpointing): it belongs to that pass.
            root = task
            self._queue_end(task)
        anchor = None if output.requires_grad else self._anchor(output.device)
        if output.is_leaf or output._base is not None:
            output = output.clone()
        return _Observe.apply(output, inputs, self, index, root, anchor)

    def _anchor(self, device: torch.device) -> torch.Tensor:
        """A 0-d leaf requiring grad that lets an output which needs no gradient of its own
        (the LoRA path disabled, the input frozen) carry one back to the statistic."""
        anchor = self._anchors.get(device)
        if anchor is None:
            anchor = self._anchors[device] = torch.zeros((), device=device, requires_grad=True)
        return anchor

    def _queue_end(self, task: int) -> None:
        if task in self._queued:
            return
        self._queued.add(task)

        def end() -> None:
            self._queued.discard(task)
            if self._root == task:
                self._end_pass()

        torch.autograd.Variable._execution_engine.queue_callback(end)

    def _end_pass(self) -> None:
        """Ends the current backward pass; its multi-call accumulators go into the step (with
        accumulation_steps > 1 they stay, summing the step's passes, until `take_row`)."""
        if self.accumulation_steps == 1:
            self._fold()
        self._accumulate.clear()
        self._root = None

    def _fold(self) -> None:
        """‖accumulator‖² of every accumulating matrix into the step's statistics."""
        for index, acc in self._acc.items():
            norm = torch.linalg.vector_norm(acc).square()
            if self.estimator == "sketch" and self.matrices[index].kind == "linear":
                norm = norm / self.sketch_dim
            self._add(index, norm)
        self._acc.clear()

    def _add(self, index: int, value: torch.Tensor) -> None:
        previous = self._pending[index]
        self._pending[index] = value if previous is None else previous + value

    def _omega(self, in_features: int, inputs: torch.Tensor) -> torch.Tensor:
        return self._projections.get(in_features, inputs, self._step_of())

    @torch.no_grad()
    def _on_grad(
        self, index: int, inputs: torch.Tensor | None, grad: torch.Tensor, root: int | None
    ) -> None:
        matrix = self.matrices[index]
        if root is None:
            root = _graph_task()
            self._queue_end(root)
        if root != self._root:
            self._end_pass()
            self._root = root
        accumulate = self._accumulate.get(index)
        if accumulate is None:
            accumulate = self._accumulate[index] = self._first_grad_of_pass(index, matrix)
        self._calls[index] = max(0, self._calls[index] - 1)
        if inputs is None:  # edited in place since the call (see _Observe.backward)
            self._lost.add(index)
            return

        g = grad.reshape(-1, grad.shape[-1])
        if g.dtype == torch.float16:
            # fp16 (scaled by a GradScaler) overflows in G Gᵀ or Gᵀ X long before the LoRA
            # gradients do; bf16 has fp32's range. One layer at a time, so the copy is small.
            g = g.float()
        if matrix.kind == "embedding":
            self._embedding_grad(index, matrix, inputs, g, accumulate)
            return
        x = inputs.reshape(-1, inputs.shape[-1]).to(g.dtype)
        sketch = self.estimator == "sketch"
        if not accumulate:
            if sketch:
                value = sketch_sq_norm(g, x, self._omega(matrix.in_features, x))
            else:
                value = exact_sq_norm(g, x)
            self._add(index, value)
            return
        acc_dtype = _acc_dtype(g)
        if sketch:
            x = x @ self._omega(matrix.in_features, x)
        part = g.T.to(acc_dtype) @ x.to(acc_dtype)
        acc = self._acc.get(index)
        if acc is None:
            self._acc[index] = part
        else:
            acc.add_(part)

    def _first_grad_of_pass(self, index: int, matrix: AdapterMatrix) -> bool:
        """Bookkeeping at a module's first gradient in a backward pass; whether its gradients
        accumulate (a module called several times per forward, or accumulation_steps > 1).

        Unset LoRA gradients mean zero_grad(set_to_none=True) ran since its last one: a new
        optimizer step, so what is left from a step the optimizer never took (GradScaler
        skip) is dropped."""
        if _grads_unset(matrix):
            self._pending[index] = None
            self._passes[index] = 0
            self._acc.pop(index, None)
        self._passes[index] += 1
        multi_call = self._calls[index] >= 2
        if multi_call:
            self.shared.add(index)
        return multi_call or self.accumulation_steps > 1

    def _embedding_grad(
        self, index: int, matrix: AdapterMatrix, ids: torch.Tensor, g: torch.Tensor, acc: bool
    ) -> None:
        distinct, rows, num_embeddings = _embedding_grad_rows(matrix, ids, g)
        if not acc:
            self._add(index, torch.linalg.vector_norm(rows).square())
            return
        if index not in self._acc:
            shape = (num_embeddings, g.shape[1])
            self._acc[index] = torch.zeros(shape, dtype=rows.dtype, device=rows.device)
        self._acc[index].index_add_(0, distinct, rows)


def _embedding_grad_rows(
    matrix: AdapterMatrix, ids: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(distinct ids, their rows of ∂L/∂W, the vocabulary size) of a LoRA Embedding's frozen
    weight, from the gradient `g` of its output (scaled as the embedding scales its output)."""
    layer: Any = matrix.module  # a peft lora.Embedding (dynamic attributes)
    base = layer.get_base_layer()
    scale = layer._get_embed_scale()
    if scale is not None:
        g = g * scale.to(g.device, g.dtype)
    distinct, rows = embedding_rows(g, ids.reshape(-1), base.padding_idx)
    return distinct, rows, base.num_embeddings
