"""Stage III heterogeneous matching (DESIGN.md section 2).

- :mod:`.cluster_matching` -- CHM: Hungarian matching of side-A / side-B clusters on mixed
  image-centroid and text similarity; shared cross-group labels.
- :mod:`.instance_matching` -- IHM: mutual top-k instance pairs in image and text space.
- :mod:`.text_update` -- DRU: per-epoch momentum update of cluster text features.
"""

from .cluster_matching import (
    ClusterMatch,
    CrossGroupLabels,
    ScenarioMatching,
    accept_matches,
    cluster_centroids,
    cluster_similarity,
    cross_group_labels,
    match_clusters,
    match_precision,
    match_scenario,
    sides_by_camera,
)
from .instance_matching import mutual_topk_pairs, text_space, topk_neighbours
from .text_update import cluster_correspondence, instance_offline_text, update_text_features

__all__ = [
    "ClusterMatch",
    "CrossGroupLabels",
    "ScenarioMatching",
    "cluster_centroids",
    "cluster_similarity",
    "match_clusters",
    "accept_matches",
    "match_precision",
    "cross_group_labels",
    "sides_by_camera",
    "match_scenario",
    "text_space",
    "topk_neighbours",
    "mutual_topk_pairs",
    "cluster_correspondence",
    "instance_offline_text",
    "update_text_features",
]
