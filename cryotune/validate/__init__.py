"""Downstream validation: 3D reconstruction with FSC, and conformation clustering.

- :mod:`cryotune.validate.reconstruct`: direct Fourier inversion from images with known poses
  (RELION pose, origin and CTF conventions), on CPU or CUDA.
- :mod:`cryotune.validate.fsc`: Fourier shell correlation, resolution at 0.143 and 0.5,
  gold-standard half maps and FSC against a known truth.
- :mod:`cryotune.validate.cluster`: Isomap (or spectral, MDS, t-SNE) + k-means accuracy of
  telling two conformations apart.
- :mod:`cryotune.validate.reference`: a dataset's reference (test images, poses, CTF, true
  volumes) and the validation of one image stack against it.
- :mod:`cryotune.validate.record`: validation results as study columns and arrays.

Nothing is imported here, so each module loads only what it needs (the FSC needs no torch).
"""
