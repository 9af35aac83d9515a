"""The Trainer's own checkpoint folders of a run: their names and finding the latest complete one.

Owns the `checkpoint-N` prefix, the files the Trainer writes into each (`trainer_state.json`, last;
`model.safetensors` without DeepSpeed) and `latest_checkpoint`, which resuming and the refusal to
reuse an output folder rely on.
"""

from __future__ import annotations

from pathlib import Path

#: The Trainer's model weights file, read back on resume (runs without DeepSpeed).
RESUME_WEIGHTS = "model.safetensors"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete `checkpoint-N` folder with the largest N in `output_dir`, or None. A folder
    without `trainer_state.json` (written last by the Trainer) was cut short and is skipped."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name.removeprefix(CHECKPOINT_PREFIX)
        if step.isdigit() and (path / TRAINER_STATE).is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None
