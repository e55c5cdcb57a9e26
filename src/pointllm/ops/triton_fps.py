"""Farthest point sampling for CUDA tensors as a single Triton kernel.

The reference loop launches several small kernels per sample (thousands for 512 samples), which
dominates the encoder's time on a GPU. Here one program per cloud keeps the cloud and its running
minimum distances in registers and runs the whole loop over the samples itself.

Triton is optional: without it (or without CUDA) `supports` is False and callers use the
reference loop. Correctness is checked against the reference by a `gpu`-marked test.
"""

from __future__ import annotations

import warnings

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

# One program holds x, y, z and the running distance of every point in registers; beyond this
# many points that would spill heavily, and the reference loop is used instead.
MAX_POINTS = 16384

_disabled_reason: str | None = None


def supports(xyz: torch.Tensor) -> bool:
    """Whether `farthest_point_sample_triton` can run on xyz (B, N, 3)."""
    return (
        triton is not None
        and _disabled_reason is None
        and xyz.is_cuda
        and xyz.shape[1] <= MAX_POINTS
    )


def disable(error: BaseException) -> None:
    """Stop using the kernel for the rest of the process after a failure, with one warning."""
    global _disabled_reason
    _disabled_reason = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"Triton farthest point sampling failed ({_disabled_reason}); using the torch loop instead",
        RuntimeWarning,
        stacklevel=3,
    )


if triton is not None:

    @triton.jit
    def _fps_kernel(
        xyz_ptr,  # (B, N, 3), last dim contiguous
        start_ptr,  # (B,) int64
        out_ptr,  # (B, S) int64, contiguous
        num_points,
        num_samples,
        stride_batch,
        stride_point,
        BLOCK_N: tl.constexpr,
    ):
        cloud = tl.program_id(0).to(tl.int64)
        offsets = tl.arange(0, BLOCK_N)
        valid = offsets < num_points
        base = xyz_ptr + cloud * stride_batch
        x = tl.load(base + offsets * stride_point, mask=valid, other=0.0)  # (BLOCK_N,)
        y = tl.load(base + offsets * stride_point + 1, mask=valid, other=0.0)
        z = tl.load(base + offsets * stride_point + 2, mask=valid, other=0.0)
        # Real lanes start at +inf (the reference's 1e10 acts the same); padding lanes stay at
        # -inf, so argmax never picks them.
        dist = tl.where(valid, tl.zeros_like(x) + float("inf"), tl.zeros_like(x) - float("inf"))
        farthest = tl.load(start_ptr + cloud).to(tl.int64)
        out_row = out_ptr + cloud * num_samples
        for i in range(num_samples):
            tl.store(out_row + i, farthest)
            center = base + farthest * stride_point
            dx = x - tl.load(center)
            dy = y - tl.load(center + 1)
            dz = z - tl.load(center + 2)
            dist = tl.minimum(dist, dx * dx + dy * dy + dz * dz)
            # Leftmost maximum on ties, like torch.argmax in the reference.
            farthest = tl.argmax(dist, axis=0, tie_break_left=True).to(tl.int64)


def farthest_point_sample_triton(
    xyz: torch.Tensor, num_samples: int, start_idx: torch.Tensor
) -> torch.Tensor:
    """FPS on CUDA xyz (B, N, 3), N <= MAX_POINTS, from start_idx (B,) -> (B, S) int64.

    Distances in float64 for float64 input, float32 otherwise. Ties: leftmost maximum, as in
    the reference (up to fused multiply-add rounding of the distances).
    Callers validate shapes and values; see `pointllm.ops.farthest_point_sample`.
    """
    if triton is None:
        raise RuntimeError("farthest_point_sample_triton needs the triton package")
    if xyz.dtype != torch.float64:
        xyz = xyz.float()
    xyz = xyz.contiguous()
    batch, num_points, _ = xyz.shape
    out = torch.empty(batch, num_samples, dtype=torch.long, device=xyz.device)
    block = max(16, triton.next_power_of_2(num_points))
    num_warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    # Launch on the tensor's GPU, not the current one.
    with torch.cuda.device(xyz.device):
        _fps_kernel[(batch,)](
            xyz,
            start_idx.to(device=xyz.device, dtype=torch.long).contiguous(),
            out,
            num_points,
            num_samples,
            xyz.stride(0),
            xyz.stride(1),
            BLOCK_N=block,
            num_warps=num_warps,
        )
    return out
