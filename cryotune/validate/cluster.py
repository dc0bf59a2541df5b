"""Conformation clustering: can the two conformations be told apart from (denoised) images?

As in the paper's appendix: the images of two conformations ("closed" and "open", the first and
last by default, see :func:`select_conformations`) are flattened, reduced to two dimensions by
a manifold embedding (Isomap by default; spectral embedding, metric MDS and t-SNE as options,
all from scikit-learn), grouped by k-means (one cluster per conformation, ``n_init=10``) and
scored by the accuracy under the best one-to-one matching of clusters to conformations
(Hungarian assignment, so any number of classes works and swapped cluster ids do not matter).

Example::

    import numpy as np
    from cryotune.validate.cluster import cluster_accuracy, select_conformations
    rng = np.random.default_rng(0)
    conformation = np.repeat([0, 1, 2], 30)
    images = rng.standard_normal((90, 16, 16)) + conformation[:, None, None]
    rows = select_conformations(conformation)          # conformations 0 and 2
    result = cluster_accuracy(images[rows], conformation[rows])
    print(result["correct"], "/", result["n"], result["accuracy"])
"""

from __future__ import annotations

import warnings

import numpy as np

from cryotune.errors import BadInput

__all__ = ["METHODS", "cluster_accuracy", "match_clusters", "select_conformations"]

METHODS = ("isomap", "spectral", "mds", "tsne")


def select_conformations(conformation, first: int = 0, last: int | None = None) -> np.ndarray:
    """Row indices of the images of two conformations (closed = ``first``, open = ``last``).

    Args:
        conformation: ``(n,)`` conformation index per image, -1 where unknown.
        first: the first conformation (0 by default).
        last: the second; the largest known conformation by default.

    Returns:
        sorted int64 row indices of the images whose conformation is ``first`` or ``last``.

    Raises:
        BadInput: the conformations are unknown, or ``first`` or ``last`` has no image.
    """
    conformation = np.asarray(conformation)
    known = conformation[conformation >= 0]
    if len(known) == 0:
        raise BadInput("no image has a known conformation", "conformation",
                       "clustering needs a simulated dataset (conformation labels)")
    last = int(known.max()) if last is None else last
    for name, value in (("first", first), ("last", last)):
        if not np.any(conformation == value):
            raise BadInput(f"no image has conformation {value}", name,
                           f"choose among {sorted(set(known.tolist()))}")
    if first == last:
        raise BadInput(f"first and last are both conformation {first}", "first/last",
                       "choose two different conformations")
    return np.nonzero((conformation == first) | (conformation == last))[0].astype(np.int64)


def match_clusters(labels, clusters) -> np.ndarray:
    """Relabel cluster ids with the true labels under the matching that maximises agreement.

    Args:
        labels: ``(n,)`` true labels (any integers).
        clusters: ``(n,)`` cluster ids, at most as many distinct values as ``labels`` has.

    Returns:
        ``(n,)`` predicted labels in the label space of ``labels``.
    """
    from scipy.optimize import linear_sum_assignment

    classes, y = np.unique(labels, return_inverse=True)
    ids, c = np.unique(clusters, return_inverse=True)
    if len(ids) > len(classes):
        raise BadInput(f"{len(ids)} clusters for {len(classes)} classes", "clusters",
                       "ask for at most one cluster per class")
    counts = np.zeros((len(ids), len(classes)), dtype=np.int64)
    np.add.at(counts, (c, y), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.empty(len(ids), dtype=np.int64)
    mapping[rows] = cols
    return classes[mapping[c]]


def _embed(x: np.ndarray, method: str, n_neighbors: int, seed: int) -> np.ndarray:
    from scipy.sparse import SparseEfficiencyWarning
    from sklearn import manifold

    if method == "isomap":
        model = manifold.Isomap(n_neighbors=n_neighbors, n_components=2)
    elif method == "spectral":
        model = manifold.SpectralEmbedding(n_components=2, n_neighbors=n_neighbors,
                                           random_state=seed)
    elif method == "mds":
        model = manifold.MDS(n_components=2, n_init=4, init="random", random_state=seed)
    else:
        model = manifold.TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3),
                              init="pca", random_state=seed)
    # Well separated conformations give a disconnected neighbour graph, which scikit-learn warns
    # about (and completes with a slow sparse edit) while embedding it correctly: the expected
    # case here, not a problem to report. Every other warning still shows.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(connected|Completing the graph)",
                                category=UserWarning)
        warnings.filterwarnings("ignore", category=SparseEfficiencyWarning)
        return model.fit_transform(x)


def cluster_accuracy(images, labels, *, method: str = "isomap", n_neighbors: int = 10,
                     seed: int = 0) -> dict:
    """Embed images in 2D, cluster with k-means, and score against the true conformations.

    Args:
        images: ``(n, H, W)`` images (clean, noisy or denoised).
        labels: ``(n,)`` true conformation per image; k-means uses one cluster per distinct value.
        method: ``"isomap"`` (the paper's choice), ``"spectral"``, ``"mds"`` or ``"tsne"``.
        n_neighbors: neighbourhood size of the Isomap and spectral graphs.
        seed: seed of the embedding (where random) and of k-means.

    Returns:
        dict with ``accuracy`` (``correct / n``), ``correct``, ``n``, ``embedding`` ``(n, 2)``,
        ``predicted`` (cluster labels matched to the true labels, :func:`match_clusters`) and
        ``method``.

    Raises:
        BadInput: shapes disagree, fewer than two classes, too few images, or unknown method.
    """
    from sklearn.cluster import KMeans

    images, labels = np.asarray(images), np.asarray(labels)
    if method not in METHODS:
        raise BadInput(f"unknown embedding {method!r}", "method", f"use one of {', '.join(METHODS)}")
    if images.ndim != 3 or labels.shape != (len(images),):
        raise BadInput(f"images {images.shape} and labels {labels.shape} do not match", "labels",
                       "pass an (n, H, W) stack and one label per image")
    k = len(np.unique(labels))
    if k < 2 or len(images) <= max(n_neighbors, 2 * k):
        raise BadInput(f"{len(images)} images of {k} conformations are too few to cluster",
                       "images", f"pass more than {max(n_neighbors, 2 * k)} images of at least 2 "
                       "conformations")
    x = images.reshape(len(images), -1).astype(np.float64)
    embedding = _embed(x, method, n_neighbors, seed)
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embedding)
    predicted = match_clusters(labels, clusters)
    correct = int((predicted == labels).sum())
    return {"accuracy": correct / len(labels), "correct": correct, "n": len(labels),
            "embedding": embedding, "predicted": predicted, "method": method}
