"""Downstream validation of a denoiser on a dataset's test split: FSC and conformation clustering.

:func:`load_reference` reads what every validation of one dataset shares, once: the test split
(noisy and clean images, poses, origins, defocus, conformations), the CTF settings, and for a
simulated store the ground-truth volume of each conformation, rendered with
:func:`cryotune.data.simulate.render_volume` at the dataset's pixel size and box and divided by
``max - min`` of the manifest's normalisation (the images are ``(projection - min) / (max -
min)``; the images are reconstructed with the ``- min`` offset taken off again, ``zero``). :func:`validate_images` then scores one stack of test
images (clean, noisy, or a denoiser's output, in stored order):

- ``fsc``: one reconstruction per conformation (all images together when conformations are
  unknown) by :func:`cryotune.validate.reconstruct.reconstruct` with the stored poses, origins
  and CTF (Wiener); the FSC against the truth (simulated stores) and the gold-standard half-map
  FSC (:func:`cryotune.validate.fsc.half_map_fsc`). Each kind of curve is the image-count
  weighted mean of the per-conformation curves, and its resolutions at 0.143 and 0.5 become
  ``fsc_truth_res_0143_A``, ``fsc_truth_res_05_A``, ``fsc_half_res_0143_A``,
  ``fsc_half_res_05_A``. ``fsc_res_0143_A`` and ``fsc_res_05_A`` repeat the truth values when
  the dataset knows the truth (``fsc_vs_truth = 1``) and the half-map values otherwise
  (``fsc_vs_truth = 0``). A dataset without poses gives ``needs`` = "needs poses", no numbers.
  ``fsc_n_images`` counts the images reconstructed (the half maps hold half each).
- **Real data** (an ingested store whose references were projected from a map, ``cryotune
  ingest --map``): there is no truth, so ``fsc_res_*`` are the half-map values, and the full
  reconstruction is also correlated with the input map (masked and cropped as the references
  were): ``fsc_map_res_0143_A``, ``fsc_map_res_05_A`` and the curve ``fsc_map_curve``. That FSC
  is biased toward the map (the poses were refined against it and the references projected from
  it), so it is no resolution estimate; the half-map FSC is. With ``--ctf none`` the references
  (and so a denoiser's output) carry no CTF while the particles do: the noisy stack is then
  reconstructed with its CTF and the others without (:func:`validate_images`'s ``ctf``).
- ``clustering``: :func:`cryotune.validate.cluster.cluster_accuracy` (Isomap + k-means) on the
  images of the first and last conformation, ``cluster_acc``. With uniform random views the
  view, not the conformation, dominates the pixels: clean projections of the built-in
  molecule's conformations 0 and K-1 cluster near chance over all views. ``views="cone"`` (the
  default) keeps the images whose projection direction (``R[2]``, the molecule-frame axis the
  image integrates along) lies within ``cone_deg`` (30) degrees of the densest direction
  (:func:`view_selection`), and turns each in-plane by its known pose so that one fixed
  molecule axis points along image x; ``views="all"`` clusters every image as it is.
  ``cluster_acc_all`` holds the all-view accuracy too when ``views="cone"``. Measured on the
  built-in molecule (32 px, SNR 0.1, conformations 0 and 4; ``simulate(n_train=1000,
  n_test=1500, seed=0)``): 55 test images lie in the 30 degree cone, where clean images
  cluster at 0.75 and noisy ones at 0.62, against 0.51 for both over all views; on the first
  800 test images (29 in the cone) at 0.83 and 0.59; a 40 degree cone (82 images) gives 0.83
  and 0.62. The accuracy depends on the direction the cone lands on, not only on its size:
  over ten draws of 1,500 test images the clean accuracy in the 30 degree cone spans
  0.53-1.00 (at least 0.9 in four) and the noisy one 0.53-0.74.

Example::

    from cryotune.validate.reference import load_reference, validate_images
    ref = load_reference("data/sim-32")
    clean = validate_images(ref, ref.clean)
    noisy = validate_images(ref, ref.noisy)
    print(clean.scalars["fsc_res_0143_A"], noisy.scalars["fsc_res_0143_A"])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryotune import vocab
from cryotune.data.geometry import quaternion_to_matrix
from cryotune.data.molecules import Atoms
from cryotune.data.store import open_dataset
from cryotune.errors import BadInput
from cryotune.validate.cluster import cluster_accuracy, select_conformations
from cryotune.validate.fsc import fsc, half_map_fsc, resolution

log = logging.getLogger(__name__)

__all__ = ["Reference", "Validation", "load_reference", "validate_dataset",
           "validate_images"]

NEEDS_POSES = "needs poses"


@dataclass
class Reference:
    """What every validation of one dataset shares (picklable: it goes to Ray trials)."""

    pixel_size: float
    ids: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray
    conformation: np.ndarray
    rotations: np.ndarray | None  # (n, 3, 3), None when the dataset has no poses
    shifts: np.ndarray | None
    ctf: dict | None  # reconstruct()'s ctf mapping, defocus per test image
    truth: dict[int, np.ndarray] = field(default_factory=dict)  # conformation -> volume
    input_map: np.ndarray | None = None  # the map an ingested store's references came from
    clean_ctf: bool = True  # whether the clean references (and denoised images) carry the CTF
    zero: float = 0.0  # the stored value of an unnormalised 0, -min / (max - min)


@dataclass
class Validation:
    """One image stack's results: scalar columns for the study row, arrays for the store."""

    scalars: dict
    arrays: dict[str, np.ndarray]
    needs: str | None = None


def check_what(what: Sequence[str], where: str = "validate") -> tuple[str, ...]:
    """The validations asked for, checked against :data:`cryotune.vocab.VALIDATIONS`."""
    out = tuple(dict.fromkeys(w.strip() for w in what if w.strip()))
    bad = [w for w in out if w not in vocab.VALIDATIONS]
    if bad:
        raise BadInput(f"unknown validation {bad[0]!r}", where,
                       f"use {' and/or '.join(vocab.VALIDATIONS)}")
    return out


def load_reference(path: str | Path, *, limit: int | None = None) -> Reference:
    """Read a dataset's test split, poses, CTF and ground truth for validation.

    Args:
        path: a dataset store.
        limit: use only the first ``limit`` test images (as ``cryotune baselines --limit``).

    Returns:
        The :class:`Reference`; ``rotations`` is None when any test pose is unknown.
    """
    from cryotune.data.simulate import render_volume  # torch: only to load a reference

    ds = open_dataset(path, verify=False)
    columns = ["id", "clean", "noisy", "conformation", "rotation", "shift"]
    ctf = ds.ctf_params()
    if ctf and ds.manifest.get("has_defocus"):
        columns.append("defocus")
    test = ds.read("test", columns, stop=limit)
    quats = np.asarray(test["rotation"], dtype=np.float64)
    posed = bool(ds.manifest.get("has_poses")) and len(quats) and np.isfinite(quats).all()
    rotations = quaternion_to_matrix(quats) if posed else None
    shifts = np.asarray(test["shift"], dtype=np.float32) if posed else None
    if shifts is not None and not np.any(shifts):
        shifts = None
    ctf_map = None
    if ctf and "defocus" in test:
        ctf_map = {k: ctf[k] for k in ("voltage_kv", "cs_mm", "amplitude_contrast")}
        ctf_map.update(pixel_size=ds.pixel_size, defocus=np.asarray(test["defocus"]))
    truth = {}
    files = ds.truth_volumes() or []
    norm = ds.manifest.get("normalization") or {}
    if files and {"min", "max"} <= set(norm):
        scale = 1.0 / (float(norm["max"]) - float(norm["min"]))
        for k, file in enumerate(f for f in files if f.suffix == ".npz"):
            atoms = Atoms.from_npz(file)
            truth[k] = render_volume(atoms, ds.image_shape[0], ds.pixel_size) * np.float32(scale)
    refs = ds.manifest.get("references") or {}
    zero = -float(norm["min"]) / (float(norm["max"]) - float(norm["min"])) if {
        "min", "max"} <= set(norm) else 0.0
    return Reference(pixel_size=ds.pixel_size, ids=np.asarray(test["id"]),
                     clean=np.array(test["clean"]), noisy=np.array(test["noisy"]),  # writable
                     conformation=np.asarray(test["conformation"]), rotations=rotations,
                     shifts=shifts, ctf=ctf_map, truth=truth,
                     input_map=_input_map(ds.manifest, ds.image_shape[0]) if posed else None,
                     clean_ctf=refs.get("source") != "map" or refs.get("ctf") != "none",
                     zero=zero)


def _input_map(manifest: dict, size: int) -> np.ndarray | None:
    """The map an ingested store's references were projected from, masked and cropped as they
    were; None for other stores, or (with a warning) when the file is gone."""
    from cryotune.data.project import read_map

    refs = manifest.get("references") or {}
    if refs.get("source") != "map" or not refs.get("map"):
        return None
    try:
        volume, _ = read_map(refs["map"])
        if refs.get("mask"):
            volume = volume * read_map(refs["mask"], what="mask")[0]
    except BadInput as err:
        log.warning("no FSC against the input map: %s", err)
        return None
    n = volume.shape[0]
    if n < size:
        log.warning("no FSC against the input map: its box %d is smaller than the images' %d",
                    n, size)
        return None
    lo = n // 2 - size // 2  # ingest's --crop keeps the central pixels about n // 2
    return volume[lo:lo + size, lo:lo + size, lo:lo + size]


def _rows_ctf(ref: Reference, rows: np.ndarray):
    shifts = None if ref.shifts is None else ref.shifts[rows]
    ctf = None if ref.ctf is None else {**ref.ctf, "defocus": ref.ctf["defocus"][rows]}
    return shifts, ctf


def _fsc(ref: Reference, images: np.ndarray, seed: int, device: str,
         with_ctf: bool = True) -> tuple[dict, dict]:
    from cryotune.validate.reconstruct import reconstruct  # torch: only to reconstruct

    # the normalisation's offset is constant over the box, not over the padded box the
    # reconstruction transforms: left in, it leaks into the lowest shells (CTF-modulated
    # references have a minimum well below 0)
    images = images - np.float32(ref.zero)
    groups = sorted(set(ref.conformation.tolist()) - {-1}) or [-1]
    curves: dict[str, list] = {"truth": [], "half": [], "map": []}
    weights, volumes = [], {}
    for k in groups:
        rows = np.nonzero(ref.conformation == k)[0] if k >= 0 else np.arange(len(images))
        if len(rows) < 4:
            continue
        shifts, ctf = _rows_ctf(ref, rows)
        ctf = ctf if with_ctf else None
        half = half_map_fsc(images[rows], ref.rotations[rows], ref.ids[rows],
                            pixel_size=ref.pixel_size, seed=seed, shifts_px=shifts, ctf=ctf,
                            device=device)
        curves["half"].append(half["curve"])
        weights.append(len(rows))
        volume = reconstruct(images[rows], ref.rotations[rows], shifts_px=shifts, ctf=ctf,
                             device=device)
        volumes[k] = volume
        if k in ref.truth:
            curves["truth"].append(fsc(volume, ref.truth[k])[1])
        if ref.input_map is not None:
            curves["map"].append(fsc(volume, ref.input_map)[1])
    if not weights:
        raise BadInput("no conformation has 4 test images to reconstruct", "test split",
                       "validate on a dataset with more test images")
    n = images.shape[1]
    freq = np.arange(n // 2 + 1) / n
    scalars, arrays = {}, {"fsc_freq": freq / ref.pixel_size}
    for kind, found in curves.items():
        if len(found) != len(weights):
            continue
        curve = np.average(np.stack(found), axis=0, weights=weights)
        arrays[f"fsc_{kind}_curve"] = curve
        for key, thr in (("0143", 0.143), ("05", 0.5)):
            scalars[f"fsc_{kind}_res_{key}_A"] = resolution(freq, curve, ref.pixel_size, thr)
    source = "truth" if "fsc_truth_curve" in arrays else "half"
    scalars["fsc_res_0143_A"] = scalars[f"fsc_{source}_res_0143_A"]
    scalars["fsc_res_05_A"] = scalars[f"fsc_{source}_res_05_A"]
    scalars["fsc_vs_truth"] = int(source == "truth")
    scalars["fsc_n_images"] = int(sum(weights))
    k = max(volumes, key=lambda c: int(np.sum(ref.conformation == c)) if c >= 0 else 0)
    v = volumes[k]
    c = n // 2
    arrays["volume_views"] = np.stack([v[c], v[:, c], v[:, :, c], v.sum(axis=0)]).astype(np.float32)
    arrays["volume_conformation"] = np.asarray(k)
    return scalars, arrays


def view_selection(rotations: np.ndarray, cone_deg: float = 30.0,
                   min_images: int = 20) -> tuple[np.ndarray, float]:
    """Rows whose projection directions lie within ``cone_deg`` of the densest direction.

    The centre is the image direction with the most directions within ``cone_deg`` of it; when
    fewer than ``min_images`` lie in that cone, the cone widens to the tightest one around the
    centre that holds ``min_images``.

    Args:
        rotations: ``(n, 3, 3)`` poses; row 2 of each is its projection direction.
        cone_deg: the cone's half angle in degrees.
        min_images: the fewest images to keep.

    Returns:
        ``(rows, half_angle_deg)``: the kept row indices (sorted) and the cone's half angle.
    """
    d = rotations[:, 2, :]
    n = len(d)
    if n <= min_images:
        return np.arange(n), 180.0
    cos = np.clip(d @ d.T, -1.0, 1.0)
    inside = cos >= np.cos(np.radians(cone_deg))
    centre = int(np.argmax(inside.sum(axis=1)))
    if inside[centre].sum() >= min_images:
        return np.nonzero(inside[centre])[0], float(cone_deg)
    order = np.argsort(-cos[centre], kind="stable")[:min_images]
    return np.sort(order), float(np.degrees(np.arccos(cos[centre, order[-1]])))


def _align_in_plane(images: np.ndarray, rotations: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Turn each image in-plane so that the molecule-frame ``axis`` points along image +x.

    The turn is about the projection origin, pixel ``[n // 2, n // 2]``
    (:mod:`cryotune.data.geometry`), where the molecule's centre projects; bilinear
    interpolation, 0 outside the image.

    Args:
        images: ``(m, n, n)`` images of the poses ``rotations``.
        rotations: ``(m, 3, 3)`` poses; image x is ``R[0] . r`` and image y ``R[1] . r``.
        axis: a unit molecule-frame vector, not along any projection direction.

    Returns:
        ``(m, n, n)`` float images, ``axis`` projecting along +x in each.
    """
    from scipy.ndimage import affine_transform

    angles = np.arctan2(rotations[:, 1] @ axis, rotations[:, 0] @ axis)
    origin = np.array([images.shape[1] // 2, images.shape[2] // 2], dtype=np.float64)
    out = []
    for img, a in zip(images, angles, strict=True):
        # output pixel p (y, x) reads the input at origin + turn(p - origin) by +a: a feature
        # at angle a (x towards +y) about the origin lands on +x
        c, s = np.cos(a), np.sin(a)
        matrix = np.array([[c, s], [-s, c]])
        out.append(affine_transform(img, matrix, offset=origin - matrix @ origin, order=1,
                                    mode="constant"))
    return np.stack(out)


def _clustering(ref: Reference, images: np.ndarray, views: str, cone_deg: float,
                min_cone: int, seed: int) -> tuple[dict, dict]:
    rows = select_conformations(ref.conformation)
    labels = ref.conformation[rows]
    scalars, arrays = {}, {}
    if views == "cone" and ref.rotations is not None:
        everything = cluster_accuracy(images[rows], labels, n_neighbors=_neighbours(len(rows)),
                                      seed=seed)
        scalars["cluster_acc_all"] = everything["accuracy"]
        keep, angle = view_selection(ref.rotations[rows], cone_deg, min_cone)
        rows, labels = rows[keep], labels[keep]
        centre = ref.rotations[rows][:, 2].mean(axis=0)
        axis = np.cross(centre, [0.0, 0.0, 1.0] if abs(centre[2]) < 0.9 else [1.0, 0.0, 0.0])
        subset = _align_in_plane(images[rows], ref.rotations[rows], axis / np.linalg.norm(axis))
        scalars["cluster_cone_deg"] = angle
    else:
        subset = images[rows]
    result = cluster_accuracy(subset, labels, n_neighbors=_neighbours(len(rows)), seed=seed)
    scalars.update(cluster_acc=result["accuracy"], cluster_n=result["n"])
    arrays.update(cluster_embedding=result["embedding"].astype(np.float32),
                  cluster_labels=labels.astype(np.int32))
    return scalars, arrays


def _neighbours(n: int) -> int:
    return max(3, min(10, n // 4))


def validate_images(ref: Reference, images: np.ndarray, what: Sequence[str] = vocab.VALIDATIONS, *,
                    views: str = "cone", cone_deg: float = 30.0, min_cone: int = 20,
                    seed: int = 0, device: str = "cpu",
                    ctf: bool | None = None) -> Validation:
    """Score one stack of test images (in the reference's order) by FSC and clustering.

    Args:
        ref: from :func:`load_reference`.
        images: ``(n, H, W)`` clean, noisy or denoised test images.
        what: any of ``fsc`` and ``clustering``.
        views: ``"cone"`` (clustering on a cone of views, aligned in-plane) or ``"all"``.
        cone_deg: the view cone's half angle (degrees).
        min_cone: the fewest images in the cone (it widens to hold them).
        seed: half-map split, embedding and k-means seed.
        device: the reconstruction's device (``cpu``; ``auto`` uses CUDA when present).
        ctf: whether the images carry the dataset's CTF (reconstructed with it when so). None:
            ``ref.noisy`` itself does, other stacks (clean, denoised) as the clean references
            do (``ref.clean_ctf``: all but a ``--ctf none`` projection of a map).

    Returns:
        A :class:`Validation`; ``needs`` says what the dataset lacks for an asked validation.
    """
    what = check_what(what)
    if views not in ("cone", "all"):
        raise BadInput(f"unknown view selection {views!r}", "views", "use cone or all")
    with_ctf = ctf if ctf is not None else (images is ref.noisy or ref.clean_ctf)
    images = np.asarray(images, dtype=np.float32)
    if images.shape != ref.clean.shape:
        raise BadInput(f"images {images.shape} do not match the test split {ref.clean.shape}",
                       "images", "pass one image per test image, in stored order")
    start = time.perf_counter()
    scalars, arrays, needs = {}, {}, []
    if "fsc" in what:
        if ref.rotations is None:
            needs.append(NEEDS_POSES)
        else:
            s, a = _fsc(ref, images, seed, device, with_ctf)
            scalars.update(s)
            arrays.update(a)
    if "clustering" in what:
        if len(set(ref.conformation.tolist()) - {-1}) < 2:
            needs.append("needs conformation labels")
        else:
            s, a = _clustering(ref, images, views, cone_deg, min_cone, seed)
            scalars.update(s)
            arrays.update(a)
    scalars["validate_s"] = time.perf_counter() - start
    log.debug("validated %d images in %.2f s", len(images), scalars["validate_s"])
    return Validation(scalars, arrays, "; ".join(needs) or None)


def validate_dataset(path: str | Path, denoise: Callable[[np.ndarray], np.ndarray] | None = None,
                     what: Sequence[str] = vocab.VALIDATIONS, **kwargs) -> dict[str, Validation]:
    """Validate the clean and noisy test images, and a denoiser's output when given.

    Args:
        path: a dataset store.
        denoise: maps the noisy test images ``(n, H, W)`` to denoised ones.
        what: any of ``fsc`` and ``clustering``.
        **kwargs: passed to :func:`validate_images`.

    Returns:
        ``{"clean": ..., "noisy": ..., "denoised": ...}`` (the last with ``denoise``).
    """
    ref = load_reference(path)
    out = {name: validate_images(ref, getattr(ref, name), what, **kwargs)
           for name in ("clean", "noisy")}
    if denoise is not None:
        out["denoised"] = validate_images(ref, denoise(ref.noisy), what, **kwargs)
    return out
