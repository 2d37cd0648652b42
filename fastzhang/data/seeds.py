"""Named random streams: every random draw in the data layer comes from `rng`.

A stream is fixed by (seed, purpose, *more), so drawing from one purpose never
shifts another: changing the crop policy leaves the label corruption intact, and
the order of epoch 7 is regenerated without replaying epochs 1..6. The streams
are numpy PCG64 generators on the CPU, so they are identical on every machine
whatever device trains the model.

The data seed (config `data_seed`, else `seed`) draws the data set: labels, pixels,
subset; `seed` the training: order, crop (and the initial weights, models/build.py).
"""

from __future__ import annotations

import numpy as np

# Stable IDs: changing one changes every experiment's data, so only ever append.
PURPOSE_ID = {"labels": 1, "pixels": 2, "subset": 3, "order": 4, "crop": 5}


def rng(seed: int, purpose: str, *more: int) -> np.random.Generator:
    """An independent generator for `purpose` (labels, pixels, subset, order, crop).

    `more` names a sub-stream, e.g. the epoch for "order" and "crop".
    """
    if purpose not in PURPOSE_ID:
        raise ValueError(f"unknown random stream purpose {purpose!r}; known: {', '.join(PURPOSE_ID)}")
    words = [int(seed), PURPOSE_ID[purpose], *(int(m) for m in more)]
    if any(w < 0 for w in words):
        raise ValueError(f"seed and stream numbers must be >= 0; got {words}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
