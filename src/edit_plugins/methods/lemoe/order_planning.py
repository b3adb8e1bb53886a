"""Clustering-based order planning: k-means the pending edits, one cluster per expert.

Balanced clusters are needed (an expert takes exactly ``edits_per_expert`` edits), so after k-means
the edits are laid out cluster by cluster, each sorted by distance to its centroid, clusters in a
nearest-centroid chain, and the sequence is cut into batches. Deterministic for a seed.
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2


def plan_order(features: np.ndarray, edits_per_expert: int, seed: int = 0) -> list[int]:
    """A permutation of range(len(features)) whose consecutive chunks are semantically coherent."""
    n = len(features)
    k = max(1, -(-n // edits_per_expert))
    if k == 1 or n <= 2:
        return list(range(n))
    x = np.asarray(features, dtype=np.float64)
    centroids, labels = kmeans2(x, k, minit="++", seed=seed)
    members = {c: np.flatnonzero(labels == c) for c in range(k)}
    members = {c: idx for c, idx in members.items() if len(idx)}
    # Chain clusters: start with the largest, then always the nearest unvisited centroid.
    current = max(members, key=lambda c: (len(members[c]), -c))
    order, left = [], set(members) - {current}
    while True:
        idx = members[current]
        dist = np.linalg.norm(x[idx] - centroids[current], axis=1)
        order.extend(int(i) for i in idx[np.argsort(dist, kind="stable")])
        if not left:
            break
        current = min(left, key=lambda c: (np.linalg.norm(centroids[c] - centroids[current]), c))
        left.remove(current)
    return order
