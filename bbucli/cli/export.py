"""`bbu export CKPT --out DIR [--merge]`: a checkpoint as a folder plain transformers loads
(`export_checkpoint`): the Qwen2.5-VL, its processor and the detection head beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from bbucli.cli.app import app
from bbucli.cli.console import handle_errors, out

HELP = """Write a checkpoint written by `bbu train` as a folder that plain transformers (and a serving engine that reads transformers folders) loads without bbu: config.json and model.safetensors of the Qwen2.5-VL, its processor, and the detection head (head.safetensors, bbu.json) beside them.

A LoRA checkpoint is merged into the weights with --merge; without it the folder holds the base (with the trained merger) and the adapter in peft's format under adapter/ (PeftModel.from_pretrained(model, DIR/adapter)).

[bold]Examples[/]

[cyan]bbu export runs/7b-lora/checkpoint-400 --out exported/ --merge[/]
"""


@app.command("export", help=HELP)
@handle_errors
def export_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            exists=True,
            file_okay=False,
            metavar="CKPT",
            help="Checkpoint folder written by `bbu train`.",
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", file_okay=False, help="New (or empty) folder to write.")
    ],
    merge: Annotated[
        bool,
        typer.Option(
            "--merge", help="Fold a LoRA adapter into the weights (else it goes to DIR/adapter/)."
        ),
    ] = False,
) -> None:
    from bbucli.model.export import export_checkpoint

    written = export_checkpoint(checkpoint, out_dir, merge=merge)
    out.print(f"written: {escape(str(written))}")
