"""Array operations (kernel launches on a GPU) per training step, by part of the model.

    python bench/launches.py                  # every model at its default preset and batch,
                                              # and the design note's brain-like model (note)
    python bench/launches.py --quick --out /tmp/launches.json   # the tiny presets, batch 2

One ``TrainState.train_step`` (after a first step, so the moments exist) is counted on the
counting backend (``brainlike_np.backends.counting``): every namespace call, every
computing array operator and every ``backend.ops`` call is one, on the path numpy and
cupy take (flat AdamW buffers). Each operation is attributed to the innermost part of the
model it was issued in (``PARTS``); ``other`` is the batch upload and the step's own
bookkeeping. Counts are deterministic (no timing): any machine gives the same table.
Results: ``results/launches.json`` and ``launches.md`` unless ``--out`` says otherwise.
``tests/test_launch_budget.py`` holds the totals to a recorded budget.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from pathlib import Path

from brainlike_np import TrainSettings, TrainState, layers, optim, train_state
from brainlike_np.backends.counting import counting_backend
from brainlike_np.data import random_batch
from brainlike_np.models import MODELS, brainlike, get_model, get_preset, transformer

# part -> [(module or class, function names)], in the order of a step; a function of
# another part called inside one counts for the inner part. Names a version of the code
# lacks are skipped (the per-tensor step before the flat buffers had clip_by_global_norm).
PARTS = {
    "brainlike": {
        "encoder": [(brainlike, ("encoder_sparse_forward", "encoder_sparse_backward",
                                 "encoder_dense_forward", "encoder_dense_backward"))],
        "input read": [(brainlike, ("input_read_forward", "input_read_backward"))],
        "interaction steps": [(brainlike, ("step_forward", "step_backward"))],
        "decoder": [(brainlike, ("decoder_forward", "decoder_backward", "pool_forward",
                                 "pool_backward"))],
    },
    "transformer": {
        "embedding": [(transformer, ("trunk_forward", "trunk_backward"))],
        "blocks": [(transformer, ("block_forward", "block_backward"))],
        "head": [(transformer, ("head_forward", "head_backward"))],
    },
}
STEP_PARTS = {        # the same for every model
    "loss": [(layers, ("cross_entropy_forward", "cross_entropy_backward"))],
    "clipping": [(optim.AdamW, ("clip_and_update", "clip_and_step")),
                 (train_state, ("clip_by_global_norm",))],
    "AdamW": [(optim.AdamW, ("_step", "update"))],
}
REPEATED = {"brainlike": ("interaction steps", "n_steps"), "transformer": ("blocks", "n_layers")}
QUICK_BATCH = 2


@contextlib.contextmanager
def labelled_parts(counter, parts: dict):
    """Wrap each part's functions so the operations they issue count for that part."""
    saved = []
    try:
        for label, places in parts.items():
            for owner, names in places:
                for name in names:
                    fn = vars(owner).get(name)
                    if fn is not None:
                        saved.append((owner, name, fn))
                        setattr(owner, name, _in_part(counter, label, fn))
        yield
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def _in_part(counter, label, fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with counter.part(label):
            return fn(*args, **kwargs)
    return wrapped


def count_step(model_name: str, cfg, batch_size: int, by_part: bool = False):
    """The LaunchCounter of one training step (the second: moments exist) of
    ``model_name`` at ``cfg`` on a batch of ``batch_size`` random windows."""
    backend = counting_backend()
    state = TrainState.create(model_name, cfg, backend, TrainSettings(seed=0))
    x, y = random_batch(batch_size, cfg.context, cfg.vocab_size)
    state.train_step(x, y, lr=1e-3)
    counter = backend.counter
    counter.reset()
    parts = {**PARTS[model_name], **STEP_PARTS} if by_part else {}
    with labelled_parts(counter, parts), counter.counting():
        state.train_step(x, y, lr=1e-3)
    return counter


# presets counted beside each model's default: the design note's model, the one the
# launch work of issue 18 was measured on before issue 24 changed the default preset
ALSO_COUNTED = {"brainlike": ["note"]}


def measure_model(model_name: str, preset: str, batch_size: int) -> dict:
    cfg = get_preset(model_name, preset)
    counter = count_step(model_name, cfg, batch_size, by_part=True)
    order = [*PARTS[model_name], *STEP_PARTS, "other"]
    row = {"model": model_name, "preset": preset, "batch_size": batch_size,
           "total": counter.total,
           "by_part": {part: counter.by_part.get(part, 0) for part in order}}
    if model_name in REPEATED:
        part, field = REPEATED[model_name]
        row["repeats"] = {part: getattr(cfg, field)}
    return row


def markdown(result: dict) -> str:
    lines = ["| model (preset, batch) | part | operations |", "|---|---|---:|"]
    for row in result["models"].values():
        head = f"{row['model']} ({row['preset']}, {row['batch_size']})"
        repeats = row.get("repeats", {})
        for part, count in row["by_part"].items():
            each = f" ({count // repeats[part]} each x {repeats[part]})" if part in repeats else ""
            lines.append(f"| {head} | {part} | {count}{each} |")
            head = ""
        lines.append(f"| | **total** | **{row['total']}** |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    import measure     # here, not above: the launch-budget test imports this file alone
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"the tiny presets at batch {QUICK_BATCH}: checks that it runs")
    ap.add_argument("--out", type=Path, default=measure.RESULTS / "launches.json",
                    help="JSON path (the markdown table goes beside it)")
    args = ap.parse_args(argv)
    models = {}    # "model" at its default preset, "model:preset" for the others
    for model_name in MODELS:
        presets = ["tiny"] if args.quick else ["default", *ALSO_COUNTED.get(model_name, [])]
        for preset in presets:
            batch = QUICK_BATCH if args.quick else get_model(model_name).BATCH_SIZES[preset]
            measure.log(f"{model_name} ({preset}, batch {batch})")
            label = model_name if preset in ("default", "tiny") else f"{model_name}:{preset}"
            models[label] = measure_model(model_name, preset, batch)
    result = {"command": measure.command_line(), "models": models}
    measure.write_json(args.out, result)
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
