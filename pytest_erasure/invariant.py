"""Batch-invariant layers: an image must not depend on how many others share its forward pass.

CPU math libraries choose a GEMM or convolution kernel, and its blocking, by the number of rows,
and sum in that kernel's order. So a sample computed beside fifteen others differs in the last
bits from the same sample computed alone; after 25 denoising steps a pixel may move by one level,
which changes the image's hash and, rarely, a verdict. Measured on the shapes world (CPU): the
first divergence is the UNet's `time_embedding.linear_1` (MKL GEMM), then every Conv2d (oneDNN),
then GroupNorm on channels-last input (another summation order).

The fix gives every reduction a shape that does not depend on the batch:
- Linear: a batched matmul over samples, each a (tokens x in) @ (in x out) product;
- 1x1 Conv2d: the same, per pixel (oneDNN changes kernel at 16 images);
- other Conv2d: oneDNN on contiguous input, which here gives a sample the same bits in any batch
  of two or more (3x3, 2-32 px, 4-128 channels, every position in batches of 2-40, 1 or 2
  threads) but takes another kernel for one image, so a lone image is computed as a pair
  (im2col + batched matmul was exact too, but made the UNet 1.5x slower);
- GroupNorm: on contiguous input (its channels-last kernel sums in another order);
- SiLU and GELU: per sample when more than two threads share a tensor (`per_sample`).
Prompts are encoded one at a time (`generate._conditioning`) for the same reason.

Measured by tests/e2e/test_determinism.py on the tests' tiny pipelines (and by hand on the shapes
world, generating at batches 1, 3, 8 and 10): audits at batches 8, 1 and 3 give identical images;
the layers give a sample identical outputs in batches of 1, 3 and 17 at 1, 2, 3 and 4 threads, and
the same bits with 1 or 2 threads (three or more change the bits, whatever the batch: another
summation split). That is this machine's CPU kernels; other CPUs and GPUs choose other kernels.
So the promise is conditional, and the test checks it so: it first probes the platform's own
kernels (a 3x3 convolution of one sample in batches of 2 and 5, at each thread count, and across
1 and 2 threads), asserts the layers' invariance wherever those kernels keep a sample's bits, and
reports (a warning naming the kernel), not asserts, the parts this CPU's kernels rule out. The
cost is in README's benchmark table.

Where they are used (`--batch-invariant auto|on|off`, `AuditConfig.invariant_layers`): `auto`,
the default, turns them on for the CPU and off for cuda and mps. On the CPU they cost little
and buy bit-identical images across batch sizes and -n. On a GPU they were never measured to
buy that (cuBLAS and cuDNN pick kernels by shape too, and the Conv2d path here relies on
oneDNN's behaviour), while splitting every Linear into a batched matmul only slows it. What the
GPU path promises instead: the same seed, batch size, GPU model, driver and library versions
give the same images only if torch runs deterministic algorithms; set
`CUBLAS_WORKSPACE_CONFIG=:4096:8` in the environment and call
`torch.use_deterministic_algorithms(True)` (e.g. in a conftest.py) for that. Across batch sizes
or GPU models, expect a few pixels to move by a level and CRR to stay (verdicts are robust to
last-bit changes; a cached image is keyed by the kernels it was made with). `on` forces the
layers on a GPU too (correct, slower, invariance unmeasured there); `off` (or the older
`--no-batch-invariant`) gives the native kernels on the CPU.

Layers are changed by swapping their class for a subclass (same parameters, same state dict), so
they survive `copy.deepcopy` and `isinstance` checks; applying twice is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_CLASSES: dict[type, type] = {}


def _classes() -> dict[type, type]:
    """{torch layer class: its batch-invariant subclass}, built on first use (torch is heavy)."""
    if _CLASSES:
        return _CLASSES
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    class InvariantLinear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() < 2 or x.shape[0] == 0:
                return super().forward(x)
            rows = x.reshape(x.shape[0], -1, x.shape[-1])  # (samples, tokens, in)
            weight = self.weight.t().unsqueeze(0).expand(rows.shape[0], -1, -1)
            if self.bias is None:
                out = torch.bmm(rows, weight)
            else:
                out = torch.baddbmm(self.bias.expand(rows.shape[0], rows.shape[1], -1),
                                    rows, weight)
            return out.reshape(*x.shape[:-1], self.out_features)

    class InvariantConv2d(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 4 or x.shape[0] == 0:
                return super().forward(x)
            n, c, h, w = x.shape
            if (self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
                    and self.groups == 1):
                # a per-pixel product: one (out x in) @ (in x pixels) GEMM per sample
                weight = self.weight.reshape(self.out_channels, c).unsqueeze(0).expand(n, -1, -1)
                out = torch.bmm(weight, x.reshape(n, c, h * w))
                if self.bias is not None:
                    out = out + self.bias.view(1, -1, 1)
                return out.view(n, self.out_channels, h, w)
            x = x.contiguous()
            if n == 1:  # oneDNN takes another kernel for a batch of one: compute it as a pair
                return super().forward(x.expand(2, -1, -1, -1).contiguous())[:1]
            return super().forward(x)

    class InvariantGroupNorm(nn.GroupNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)

    class InvariantSiLU(nn.SiLU):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return per_sample(super().forward, x)

    _CLASSES.update({nn.Linear: InvariantLinear, nn.Conv2d: InvariantConv2d,
                     nn.GroupNorm: InvariantGroupNorm, nn.SiLU: InvariantSiLU})
    try:
        from diffusers.models.activations import GEGLU, GELU
    except ImportError:  # pragma: no cover - diffusers is a dependency; keep torch-only use working
        return _CLASSES

    class InvariantGELU(GELU):
        def gelu(self, gate: torch.Tensor) -> torch.Tensor:
            return per_sample(super().gelu, gate)

    class InvariantGEGLU(GEGLU):
        def gelu(self, gate: torch.Tensor) -> torch.Tensor:
            return per_sample(super().gelu, gate)

    _CLASSES.update({GELU: InvariantGELU, GEGLU: InvariantGEGLU})
    return _CLASSES


def per_sample(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn(x)`, one sample at a time when more than two threads would share the tensor.

    Elementwise kernels vectorise each thread's share of a tensor and finish its last few
    elements with scalar code, whose exp/erf differ from the vector ones in the last bit. Shares
    are the tensor's size over the thread count (GELU splits even tensors under ATen's usual grain),
    so with three or more threads where a share ends moves with the batch (with one or two, it
    falls at a whole sample or half of one). Applied per sample, the shares depend on the sample
    alone."""
    import torch

    if x.dim() == 0 or x.shape[0] < 2 or torch.get_num_threads() <= 2:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(1)])


def make_batch_invariant(*models: Any) -> int:
    """Swap every Linear, Conv2d, GroupNorm, SiLU, GELU and GEGLU of `models` for its
    batch-invariant form (`_classes`).

    Only exact torch classes are swapped (a library's own subclass keeps its forward). Returns
    how many layers were swapped this call.
    """
    classes = _classes()
    swapped = 0
    seen: set[int] = set()
    for model in models:
        for module in model.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            target = classes.get(type(module))
            if target is not None:
                module.__class__ = target
                swapped += 1
    return swapped


def is_batch_invariant(model: Any) -> bool:
    """True when no layer of `model` that has an invariant form is left with the native one."""
    classes = _classes()
    return not any(type(m) in classes for m in model.modules())
