"""Benchmark: Point-BERT grouping and the whole v1.2 encoder, our ops vs the original's.

The baseline mirrors the original PointLLM in the same run: FPS as a loop over the samples with a
running minimum and argmax (from index 0), kNN by a full squared-distance matrix + topk
(`pointllm.ops.group_points_reference`). For the whole encoder, the baseline is the same model with
its grouping patched to that reference.

    python benchmarks/encoder.py                      # batch 1 and 16, 8192 points, CPU (+ CUDA)
    python benchmarks/encoder.py --batch-sizes 1 --repeats 3 --skip-encoder
    python benchmarks/encoder.py --skip-encoder --stages   # + where the CPU grouping time goes

Prints a Markdown table: median milliseconds per call, clouds per second, the speed-up of ours
over the baseline (clouds/s ours / baseline), and the share of the encoder's time spent grouping.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
import torch

from pointllm.config import PointBertConfig
from pointllm.model import encoder as encoder_module
from pointllm.model.encoder import PointBertEncoder
from pointllm.ops import _cpu, cpu_kernels, group_points, group_points_reference, triton_fps


def synthetic_clouds(batch: int, num_points: int, seed: int = 0) -> torch.Tensor:
    """(B, N, 6) colored torus surfaces with random radii: surface-like, like Objaverse clouds."""
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.rand(2, batch, num_points, generator=gen) * 2 * torch.pi
    major = 0.6 + 0.3 * torch.rand(batch, 1, generator=gen)
    minor = 0.1 + 0.2 * torch.rand(batch, 1, generator=gen)
    ring = major + minor * torch.cos(v)
    xyz = torch.stack([ring * torch.cos(u), ring * torch.sin(u), minor * torch.sin(v)], dim=-1)
    rgb = torch.rand(batch, num_points, 3, generator=gen)
    return torch.cat([xyz, rgb], dim=-1)  # (B, N, 6)


def time_pair(
    ours: Callable[[], object], baseline: Callable[[], object], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of ours and baseline, warmed up once, with their repeats interleaved so
    that noise from other processes hits both alike."""

    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed(ours)
    timed(baseline)
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        samples[0].append(timed(ours))
        samples[1].append(timed(baseline))
    return statistics.median(samples[0]), statistics.median(samples[1])


@contextlib.contextmanager
def reference_grouping() -> Iterator[None]:
    """Make the encoder group points with the original's naive ops."""
    with mock.patch.object(encoder_module, "group_points", group_points_reference):
        yield


def backends(device: torch.device) -> str:
    """Which FPS / kNN backends `group_points` uses on this device."""
    if device.type == "cuda":
        fps = "triton" if triton_fps.triton is not None else "torch loop"
        return f"FPS {fps}, kNN chunked cdist+topk"
    threads = f"{torch.get_num_threads()} threads"
    return f"numba FPS (k-d leaves) + kNN (grid) + gather in one task per cloud, {threads}"


def run(args: argparse.Namespace) -> list[str]:
    """Benchmark every device and batch size; return the Markdown table lines."""
    config = PointBertConfig.from_preset("v1.2")
    model = PointBertEncoder(config).eval()
    rows = [
        "| device | batch | stage | ours ms | baseline ms | ours clouds/s | baseline clouds/s "
        "| speed-up | grouping share (ours / baseline) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for device_name in args.devices:
        device = torch.device(device_name)
        model.to(device)
        for batch in args.batch_sizes:
            points = synthetic_clouds(batch, args.points).to(device)
            with torch.inference_mode():
                g_ours, g_base = time_pair(
                    lambda p=points: group_points(p, config.num_group, config.group_size),
                    lambda p=points: group_points_reference(p, config.num_group, config.group_size),
                    args.repeats,
                    device,
                )
                rows.append(format_row(device_name, batch, "grouping", g_ours, g_base, ""))
                print(rows[-1], file=sys.stderr, flush=True)
                if args.skip_encoder:
                    continue

                def baseline_forward(p: torch.Tensor = points) -> torch.Tensor:
                    with reference_grouping():
                        return model(p)

                e_ours, e_base = time_pair(
                    lambda p=points: model(p), baseline_forward, args.encoder_repeats, device
                )
                share = f"{g_ours / e_ours:.0%} / {g_base / e_base:.0%}"
                rows.append(format_row(device_name, batch, "encoder", e_ours, e_base, share))
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


def cpu_stage_rows(batch: int, num_points: int, config: PointBertConfig, repeats: int) -> list[str]:
    """Median milliseconds of each stage of the fused CPU grouping path, as Markdown rows.

    Per-cloud stages run in one pool thread, as in `group_points`; the last row times a whole
    batch on the pool.
    """
    points = synthetic_clouds(batch, num_points)  # (B, N, 6)
    clouds = points[..., :3].contiguous().numpy()  # (B, N, 3)
    stages = numba_stages(config)

    def per_cloud() -> list[float]:
        return [
            statistics.median(timed(fn, cloud) for cloud in clouds for _ in range(repeats))
            for _, fn in stages
        ]

    medians = _cpu.thread_pool(torch.get_num_threads()).submit(per_cloud).result()
    rows = ["| stage (cumulative) | ms |", "|---|---|"]
    rows += [f"| {name}, one cloud | {ms * 1e3:.2f} |" for (name, _), ms in zip(stages, medians)]
    with torch.inference_mode():
        group_points(points, config.num_group, config.group_size)
        ms = statistics.median(
            timed(group_points, points, config.num_group, config.group_size) for _ in range(repeats)
        )
    threads = torch.get_num_threads()
    rows.append(f"| whole `group_points`, {batch} clouds on {threads} threads | {ms * 1e3:.2f} |")
    return rows


def numba_stages(config: PointBertConfig) -> list[tuple[str, Callable[[np.ndarray], object]]]:
    """Cumulative stages of the numba kernels on one cloud (N, 3)."""
    kernels = cpu_kernels

    def leaves(cloud: np.ndarray) -> tuple:
        return kernels._leaves(cloud, kernels.LEAF_SIZE)

    def sample(cloud: np.ndarray) -> tuple:
        order, starts, coords, box, _ = leaves(cloud)
        fps = kernels._fps(order, starts, coords, box, config.num_group, 0, kernels.LEAVES_PER_NODE)
        return order, coords, fps

    def search(cloud: np.ndarray) -> None:
        order, coords, (positions, radius2) = sample(cloud)
        kernels._search(
            order, coords, coords[:, positions], config.group_size, float(np.sqrt(radius2))
        )

    return [
        (f"k-d leaves of <= {kernels.LEAF_SIZE} points (numba)", leaves),
        (f"+ exact FPS to {config.num_group} centers", sample),
        (f"+ grid kNN, k={config.group_size}", search),
    ]


def timed(fn: Callable[..., object], *args: object) -> float:
    """Seconds one CPU call takes."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def format_row(device: str, batch: int, stage: str, ours: float, base: float, share: str) -> str:
    """One Markdown row from median seconds per call."""
    return (
        f"| {device} | {batch} | {stage} | {ours * 1e3:.1f} | {base * 1e3:.1f} | "
        f"{batch / ours:.1f} | {batch / base:.1f} | {base / ours:.1f}x | {share} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--points", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of the grouping")
    parser.add_argument("--encoder-repeats", type=int, default=3, help="timed encoder runs")
    parser.add_argument("--skip-encoder", action="store_true", help="time the grouping only")
    parser.add_argument(
        "--stages", action="store_true", help="also time each stage of the CPU grouping"
    )
    default_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    parser.add_argument("--devices", nargs="+", default=default_devices)
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's own choice)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"torch {torch.__version__}"
    )
    for name in args.devices:
        print(f"# {name}: {backends(torch.device(name))}")
    print()
    print("\n".join(run(args)))
    if args.stages:
        config = PointBertConfig.from_preset("v1.2")
        print()
        print("\n".join(cpu_stage_rows(max(args.batch_sizes), args.points, config, args.repeats)))
    # Other processes on the machine skew both columns; the end load tells whether they did.
    print(f"\n# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
