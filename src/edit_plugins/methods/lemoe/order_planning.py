"""Clustering-based order planning: k-means the pending edits, one cluster per expert.

Balanced clusters are needed (an expert takes exactly ``edits_per_expert`` edits), so after k-means
the edits are laid out cluster by cluster, each sorted by distance to its centroid, clusters in a
nearest-centroid chain, and the sequence is cut into batches. Deterministic for a seed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

from ...editing.requests import EditRequest, normalize_requests
from .anchors import ffn_inputs, subject_inputs
from .config import LEMoEHyperParams
from .injection import find_adaptor, find_ffn


def cluster_order(features: np.ndarray, edits_per_expert: int, seed: int = 0) -> list[int]:
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


def plan_order(model, tok, requests: list, hp: LEMoEHyperParams) -> list[int]:
    """The order to edit a known pool of requests (EditRequests or EasyEdit dicts) in, by their subjects'
    features: the registered ``plan_order`` of LEMoE. The identity when ``order_planning`` is off."""
    if not hp.order_planning or len(requests) <= hp.edits_per_expert:
        return list(range(len(requests)))
    requests = [r if isinstance(r, EditRequest) else normalize_requests([r])[0] for r in requests]
    name = find_ffn(model, hp)
    found = find_adaptor(model)
    raw = []
    for start in range(0, len(requests), 64):
        chunk = requests[start : start + 64]
        inputs = ffn_inputs(model, tok, chunk, name)
        raw.append(subject_inputs(tok, chunk, inputs))
    raw = torch.cat(raw).float()
    if found is not None and hp.routing == "anchor":
        features = found[1].router.features(raw)
    else:
        features = F.normalize((raw - raw.mean(0)) / raw.std(0).clamp_min(1e-6), dim=-1)
    return cluster_order(features.cpu().numpy(), hp.edits_per_expert, hp.order_planning_seed)
