"""Point-cloud operations (sampling, neighbourhoods, normalization) and their naive references."""

from pointllm.ops.points import (
    farthest_point_sample,
    farthest_point_sample_reference,
    gather_points,
    group_points,
    group_points_reference,
    knn,
    knn_reference,
    normalize_point_cloud,
)

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
