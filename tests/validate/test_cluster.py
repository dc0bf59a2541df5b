"""Conformation clustering: separable shapes, pure noise, label matching, conformation picking."""

from itertools import permutations

import numpy as np
import pytest

from cryotune.data.geometry import relion_euler_to_matrix
from cryotune.data.molecules import Atoms
from cryotune.data.simulate import project
from cryotune.errors import BadInput
from cryotune.validate.cluster import (
    METHODS,
    cluster_accuracy,
    match_clusters,
    select_conformations,
)


@pytest.fixture(scope="module")
def two_shapes():
    """60 views each of a closed and an open two-blob clamp (tilt below 30 degrees)."""
    rng = np.random.default_rng(0)
    images = []
    for half_width in (4.0, 14.0):
        atoms = Atoms(np.array([[-half_width, 0, 0], [half_width, 0, 0]]), weight=1.0, sigma=4.0)
        poses = relion_euler_to_matrix(rng.uniform(-180, 180, 60), rng.uniform(0, 30, 60),
                                       rng.uniform(-180, 180, 60))
        images.append(project(atoms, poses, 32, 2.0))
    return np.concatenate(images), np.repeat([0, 1], 60)


def test_clean_shapes_are_separated(two_shapes):
    images, labels = two_shapes
    out = cluster_accuracy(images, labels)
    assert out["accuracy"] >= 0.9
    assert out["n"] == 120 and out["correct"] == int((out["predicted"] == labels).sum())
    assert out["embedding"].shape == (120, 2) and out["method"] == "isomap"


def test_label_values_and_order_do_not_matter(two_shapes):
    # labels 7 for the first shape and 3 for the second: whatever ids k-means gives its clusters,
    # the matching maps them onto these labels
    images, labels = two_shapes
    renamed = np.where(labels == 0, 7, 3)
    out = cluster_accuracy(images, renamed)
    reference = cluster_accuracy(images, labels)
    assert out["correct"] == reference["correct"]
    assert set(np.unique(out["predicted"])) <= {3, 7}


def test_pure_noise_is_a_coin_toss():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 100)
    acc = [cluster_accuracy(rng.standard_normal((200, 16, 16)), labels, seed=s)["accuracy"]
           for s in range(3)]
    # the best matching of two balanced classes is at least 1/2; chance stays near it
    assert all(0.5 <= a <= 0.65 for a in acc)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "isomap"])
def test_other_embeddings_run(two_shapes, method):
    images, labels = two_shapes
    out = cluster_accuracy(images, labels, method=method, seed=0)
    assert out["embedding"].shape == (120, 2) and out["method"] == method
    assert 0.5 <= out["accuracy"] <= 1.0


def test_matching_undoes_swapped_cluster_ids():
    labels = np.array([0, 0, 0, 1, 1, 1])
    swapped = 1 - labels  # k-means called the first class cluster 1
    np.testing.assert_array_equal(match_clusters(labels, swapped), labels)


def test_matching_is_the_best_permutation():
    rng = np.random.default_rng(2)
    for _ in range(20):
        labels = rng.integers(0, 4, 50)
        clusters = np.where(rng.random(50) < 0.6, (labels + 1) % 4, rng.integers(0, 4, 50))
        best = max(sum(int(p[c] == y) for c, y in zip(clusters, labels, strict=True))
                   for p in permutations(range(4)))
        assert int((match_clusters(labels, clusters) == labels).sum()) == best


def test_select_conformations():
    conformation = np.array([0, 1, 2, 3, 4, -1, 4, 0, 2])
    np.testing.assert_array_equal(select_conformations(conformation), [0, 4, 6, 7])
    np.testing.assert_array_equal(select_conformations(conformation, first=1, last=2), [1, 2, 8])
    with pytest.raises(BadInput, match="last"):
        select_conformations(conformation, last=7)
    with pytest.raises(BadInput, match="conformation"):
        select_conformations(np.full(5, -1))


@pytest.mark.parametrize("kwargs, where", [
    (dict(method="umap"), "method"),
    (dict(labels=np.zeros(120)), "images"),
    (dict(labels=np.zeros(5)), "labels"),
])
def test_bad_input(two_shapes, kwargs, where):
    images, labels = two_shapes
    args = dict(labels=labels)
    args.update(kwargs)
    with pytest.raises(BadInput, match=where):
        cluster_accuracy(images, args.pop("labels"), **args)
