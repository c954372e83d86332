"""Reading a checkpoint this suite wrote, with NumPy alone (the files are trusted here;
the trainer's own reader, ``checkpoint.CheckpointFile``, checks every entry first)."""

import json

import numpy as np


def load_npz(path) -> tuple[dict, dict]:
    """-> (arrays, meta) of the ``.npz`` at ``path``."""
    with np.load(path) as ck:
        arrays = {k: ck[k] for k in ck.files}
    return arrays, json.loads(arrays.pop("meta.json").tobytes())
