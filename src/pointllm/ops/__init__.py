"""Point-cloud operations: normalization, farthest point sampling, kNN and Point-BERT grouping.

Each sampling/neighbourhood op has a naive reference that mirrors the original PointLLM
(`*_reference`, used by the tests) and a fast entry point that picks its backend by device:

- CPU: the numba kernels of `cpu_kernels` (exact FPS over k-d leaves, exact kNN on a grid), one
  GIL-free task per cloud on a thread pool of `torch.get_num_threads()` threads.
- CUDA: FPS as one Triton kernel (`triton_fps`) when Triton is installed; kNN by chunked exact
  `cdist` + `topk`.
- Elsewhere: the reference FPS loop and the chunked `cdist` kNN.

    sampling.py   farthest_point_sample(_reference)
    neighbours.py knn(_reference)
    grouping.py   group_points(_reference), gather_points
    normalize.py  normalize_point_cloud
"""

from pointllm.ops.grouping import gather_points, group_points, group_points_reference
from pointllm.ops.neighbours import knn, knn_reference
from pointllm.ops.normalize import normalize_point_cloud
from pointllm.ops.sampling import farthest_point_sample, farthest_point_sample_reference

__all__ = [
    "farthest_point_sample",
    "farthest_point_sample_reference",
    "gather_points",
    "group_points",
    "group_points_reference",
    "knn",
    "knn_reference",
    "normalize_point_cloud",
]
