"""Training the embedded default model: a research tool of this repository, not part of the
installed ``superneurons`` package (which ships only the trained checkpoint and its
architecture, :mod:`superneurons.models.embedded`).

From a source checkout (the repository root on the path)::

    python -m training --out runs/train-default          # the recipe; resumes from what OUT holds
    python -m training --out runs/train-default --ship   # then replace the shipped checkpoint

- :mod:`training.pool`: the rendered scene pool, made once per split.
- :mod:`training.supervision`: per-patch labels, grounding labels, losses, tensor files.
- :mod:`training.vision`: stage 1, the vision tower and its cached features.
- :mod:`training.train`: stage 2, the decoder, held-out evaluations and the export.
"""
