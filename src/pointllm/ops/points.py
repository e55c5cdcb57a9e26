"""The point ops under their former module path; each lives in its own module of `pointllm.ops`."""

from pointllm.ops import (  # noqa: F401 - re-exported
    __all__,
    farthest_point_sample,
    farthest_point_sample_reference,
    gather_points,
    group_points,
    group_points_reference,
    knn,
    knn_reference,
    normalize_point_cloud,
)
