"""Several processes for one training: the launcher command line, the process-group environment.

`bbu train cfg.yaml --gpus N [--nnodes M] [--hostfile F]` does not train in the calling process:
`launch_command` builds the command that runs the same `python -m bbucli train cfg.yaml ...`
under a launcher, and the CLI executes it. The launcher is
- the DeepSpeed launcher (`python -m deepspeed.launcher.runner`) when the config has a
  `deepspeed` section or a hostfile is given (multi-node over ssh/pdsh from one command);
- torchrun (`python -m torch.distributed.run`) otherwise; with `--nnodes M` > 1 the same command
  runs on every node with `MASTER_ADDR` / `MASTER_PORT` set to node 0 and `NODE_RANK` to the
  node's index (torchrun's c10d rendezvous).
On a machine without GPUs the N processes run on the CPU (gloo).

Running a launcher directly works too: `torchrun --nproc_per_node 2 -m bbucli train cfg.yaml` and
`deepspeed --num_gpus 2 --module bbucli train cfg.yaml`. The DeepSpeed launcher appends
`--local_rank=N` right after the module name, before `train`: `bbu` accepts it there and ignores
it (the rank is in the `LOCAL_RANK` environment variable anyway); `strip_local_rank` takes it out
of an argv for code that reads argv itself.

A DeepSpeed run in one process without a launcher still needs a process group:
`single_process_env` gives the variables a launcher would have set.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bbucli.errors import UsageError

Launcher = Literal["auto", "deepspeed", "torchrun"]
_LOCAL_RANK = re.compile(r"^--local[_-]rank(?:=(\d+))?$")
#: What a launcher sets in every process it starts.
LAUNCHED_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class LaunchPlan:
    """A command to execute: `argv` (argv[0] is this Python), `env` additions, the launcher used
    and the number of processes per node and nodes."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    launcher: Literal["deepspeed", "torchrun"]
    nproc_per_node: int
    nnodes: int

    def __str__(self) -> str:
        return " ".join(_quote(a) for a in self.argv)


def is_launched(environ: Mapping[str, str]) -> bool:
    """True inside a process a launcher started (torchrun, deepspeed, mpirun with the env set)."""
    return all(name in environ for name in LAUNCHED_ENV)


def strip_local_rank(argv: Sequence[str]) -> tuple[list[str], int | None]:
    """argv without `--local_rank=N` / `--local-rank N` (where the DeepSpeed launcher puts it),
    and N (None when absent). argv[0] is kept."""
    out: list[str] = [argv[0]] if argv else []
    rank: int | None = None
    items = list(argv[1:])
    i = 0
    while i < len(items):
        match = _LOCAL_RANK.match(items[i])
        if match is None:
            out.append(items[i])
        elif match.group(1) is not None:
            rank = int(match.group(1))
        elif i + 1 < len(items) and items[i + 1].isdigit():
            rank = int(items[i + 1])
            i += 1
        i += 1
    return out, rank


def launch_command(
    config: str | Path,
    train_args: Sequence[str],
    *,
    gpus: int,
    nnodes: int = 1,
    hostfile: str | Path | None = None,
    use_deepspeed: bool = False,
    launcher: Launcher = "auto",
    master_port: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """The command running `python -m bbucli train CONFIG *train_args` in `gpus` processes per node
    on `nnodes` nodes (see the module docstring). use_deepspeed: the config has a deepspeed section.
    Raises UsageError for impossible combinations."""
    environ = dict(environ or {})
    if gpus < 1:
        raise UsageError(f"--gpus must be >= 1, got {gpus}")
    if nnodes < 1:
        raise UsageError(f"--nnodes must be >= 1, got {nnodes}")
    if hostfile is not None and not Path(hostfile).is_file():
        raise UsageError(
            f"hostfile {hostfile} does not exist",
            hint="one line per node: `hostname slots=N` (the DeepSpeed hostfile format)",
        )
    chosen = launcher
    if chosen == "auto":
        chosen = "deepspeed" if use_deepspeed or hostfile is not None else "torchrun"
    if chosen == "torchrun" and hostfile is not None:
        raise UsageError(
            "--hostfile needs the DeepSpeed launcher", hint="drop --launcher torchrun, or use --nnodes"
        )
    script = ["-m", "bbucli", "train", str(config), *train_args]
    env: dict[str, str] = {}
    if chosen == "deepspeed":
        argv = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--num_gpus", str(gpus)]
        if hostfile is not None:
            argv += ["--hostfile", str(hostfile), "--num_nodes", str(nnodes)]
        elif nnodes > 1:
            raise UsageError(
                "several nodes with the DeepSpeed launcher need --hostfile",
                hint="list the nodes in a hostfile (`host slots=N` per line), or use torchrun",
            )
        # --no_local_rank: the rank is in LOCAL_RANK; as an argument it would land before `train`.
        argv += [
            "--master_port",
            str(master_port or free_port()),
            "--no_local_rank",
            "--module",
            *script[1:],
        ]
    else:
        argv = [
            sys.executable,
            "-u",
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(gpus),
            "--nnodes",
            str(nnodes),
        ]
        if nnodes > 1:
            missing = [n for n in ("MASTER_ADDR", "NODE_RANK") if n not in environ]
            if missing:
                raise UsageError(
                    f"--nnodes {nnodes} with torchrun needs {' and '.join(missing)} in the environment",
                    hint="run the same command on every node with MASTER_ADDR=<node 0> NODE_RANK=<0..N-1>",
                )
            port = environ.get("MASTER_PORT", str(master_port or 29500))
            argv += [
                "--node_rank",
                environ["NODE_RANK"],
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"{environ['MASTER_ADDR']}:{port}",
            ]
        else:
            argv += ["--master_addr", "127.0.0.1", "--master_port", str(master_port or free_port())]
        argv += script
    if gpus > 1 and "OMP_NUM_THREADS" not in environ:
        # torchrun's default (it warns when it sets it); processes sharing CPU cores oversubscribe.
        env["OMP_NUM_THREADS"] = "1"
    return LaunchPlan(tuple(argv), env, chosen, gpus, nnodes)


def single_process_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The process-group variables a launcher would set, for a DeepSpeed run in this one process
    (only those missing from `environ`; nothing when a launcher started this process)."""
    if is_launched(environ):
        return {}
    wanted = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": environ.get("MASTER_PORT") or str(free_port()),
    }
    return {k: v for k, v in wanted.items() if k not in environ}


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
