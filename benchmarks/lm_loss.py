"""Benchmark of the LM loss: peak memory of the supervised-positions loss vs full logits.

One training step (forward + backward) of the tiny Qwen2.5-VL (hidden 128, the real 151,936-token
vocabulary, fp32) on one 4096-token row, with the answer (supervised) tokens at the end of the row:
- full logits: transformers' own `model(input_ids, labels=...)`, (1, S, V) logits then its loss;
- supervised: `bbucli.loss.lm.lm_losses` on the final hidden states, at the default chunk size
  (checkpointed chunks) and with one chunk of every supervised position (no checkpointing), to
  show what the chunking adds to skipping the unsupervised positions.
Each variant runs in a fresh subprocess. On CPU the peak is the process's resident-set high-water
mark during the step (Linux `VmHWM`, reset just before the step) minus its resident set before
it; torch's CPU allocator hands large blocks back to the OS, so this follows live tensors. On CUDA
it is `torch.cuda.max_memory_allocated` minus the allocation before the step.

Run: `python benchmarks/lm_loss.py [--seq-len 4096] [--fractions 0.25 1.0]`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("full", "supervised", "supervised-one-chunk")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(variant: str, fraction: float, seq_len: int, chunk: int, threads: int) -> dict:
    import torch

    from bbucli.loss.lm import DEFAULT_CHUNK, lm_losses
    from bbucli.model.loading import load_model

    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    qwen = load_model("tiny", seed=0).to(device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151_000, (1, seq_len), generator=gen)
    supervised = int(seq_len * fraction)
    labels = torch.full_like(ids, -100)
    labels[:, seq_len - supervised :] = ids[:, seq_len - supervised :]
    segment = (labels != -100).to(torch.int8) * 2
    position_ids = torch.arange(seq_len).expand(3, 1, seq_len)
    ids, labels, segment, position_ids = (
        t.to(device) for t in (ids, labels, segment, position_ids)
    )
    chunk_size = {"supervised": chunk or DEFAULT_CHUNK, "supervised-one-chunk": seq_len}.get(
        variant
    )

    def step() -> float:
        if variant == "full":
            loss = qwen(
                input_ids=ids, position_ids=position_ids, labels=labels, use_cache=False
            ).loss
        else:
            hidden = qwen.model(input_ids=ids, position_ids=position_ids, use_cache=False)
            lm = lm_losses(
                hidden.last_hidden_state, labels, segment, qwen.lm_head, chunk_size=chunk_size
            )
            loss = lm.mean
        loss.backward()
        qwen.zero_grad(set_to_none=False)  # gradients stay allocated, as between optimizer steps
        return float(loss)

    step()  # warm-up: gradient buffers and allocator pools exist before the measured step
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _rss_kib("VmRSS") * 1024
        exact = _reset_peak()
    start = time.perf_counter()
    loss = step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
        how = "cuda max_memory_allocated"
    else:
        high = _rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = high * 1024 - before
        how = "VmHWM - VmRSS" if exact else "ru_maxrss - VmRSS (upper bound)"
    return {
        "variant": variant,
        "fraction": fraction,
        "chunk": chunk_size,
        "loss": loss,
        "peak_bytes": peak,
        "seconds": seconds,
        "supervised": supervised,
        "how": how,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--chunk", type=int, default=0, help="chunk size (0: the default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "FRACTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child[0], float(args.child[1]), args.seq_len, args.chunk, args.threads)
        print(json.dumps(result))
        return

    print(
        f"tiny Qwen2.5-VL, vocab 151936, fp32, one row of {args.seq_len} tokens, forward + backward"
    )
    columns = [
        ("supervised", 12),
        ("variant", 22),
        ("chunk", 6),
        ("peak MiB", 9),
        ("vs full", 8),
        ("s/step", 7),
        ("loss", 8),
    ]
    print(" ".join(f"{name:>{width}}" for name, width in columns))
    for fraction in args.fractions:
        rows = []
        for variant in VARIANTS:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                variant,
                str(fraction),
                "--seq-len",
                str(args.seq_len),
                "--chunk",
                str(args.chunk),
                "--threads",
                str(args.threads),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        full = rows[0]["peak_bytes"]
        for r in rows:
            print(
                f"{r['supervised']:>12} {r['variant']:>22} {r['chunk'] or '-':>6} "
                f"{r['peak_bytes'] / 2**20:>9.0f} {full / max(r['peak_bytes'], 1):>7.1f}x "
                f"{r['seconds']:>7.2f} {r['loss']:>8.4f}"
            )
    print(f"peak = {rows[0]['how']}, over the step, above the memory held before it")


if __name__ == "__main__":
    main()
