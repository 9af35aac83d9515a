"""`sdpa_varlen`: per-sample attention for packed rows on any device, without an L x L mask.

A packed row holds several samples one after another. transformers' `sdpa` path makes them
independent with a dense (L, L) boolean mask built from the position ids, so attention costs L^2
for the row, and SDPA's fused causal kernels (which take no mask) cannot run. flash-attention-2
avoids both with varlen boundaries, but it often fails to build and does not exist on CPU.

This module registers one more attention implementation with transformers' attention interface
(`AttentionInterface` and `AttentionMaskInterface`, under the name `ATTN_VARLEN`). Per layer:

- a packed row (batch 1, no padding mask, query length == key length, causal module): the row's
  sample boundaries come from `cu_seq_lens_q` (what `BBUModel` passes, from the collator's
  `cu_seqlens`) or, for a caller that passes only packed position ids, from the position ids' text
  row (a position that is not its predecessor + 1 starts a sample, as transformers' own packed
  detection reads them). Each sample's span then runs through transformers' `sdpa_attention_forward`
  with no mask and `is_causal`, so the cost is the sum of each sample's l^2 and the kernels are the
  fused causal ones;
- anything else (padded batches with a mask, one sequence, decoding with a cache, the vision
  tower's non-causal attention) goes to `sdpa_attention_forward` unchanged, with the mask that
  transformers' `sdpa_mask` builds: identical to `attn_implementation="sdpa"`.

The mask function returns None for rows without padding (no (L, L) tensor is ever built for a
packed row) and `sdpa_mask`'s mask otherwise.

The vision tower has the same problem in another shape: its attention runs inside windows (64
patches) and, in a few full-attention blocks, inside each image. transformers' Qwen2.5-VL vision
attention hands those boundaries (`cu_seqlens`) only to implementations whose name contains
"flash" (`is_flash_attention_requested`); any other gets one call per window, tens of thousands of
small kernels per step on a real-size model (21,452 per 3B step measured on an H200, the GPU then
busy 21% of the step). `ATTN_WINDOWS` is registered under such a name so that it receives the
boundaries, and runs all windows of one length in a single non-causal sdpa call, batched over the
windows (a few calls per layer: full windows, the image edges' shorter ones). `load_model` gives
it to the vision tower whenever the text model uses "sdpa" or `ATTN_VARLEN`. Should a transformers
release stop passing the boundaries, it falls back to plain sdpa per call: same results, the old
speed.

Registration is idempotent and happens on import of `bbucli.model.loading`, before any model is
built.
"""

from __future__ import annotations

from typing import Any

import torch

ATTN_VARLEN = "sdpa_varlen"
#: Contains "flash" on purpose: the name transformers' vision attention checks (module docstring).
ATTN_WINDOWS = "sdpa_windows_flash_api"


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (B, H, Lq, Dh), key/value (B, Hkv, Lk, Dh) -> ((B, Lq, H, Dh), None), as transformers'
    attention functions. Runs each sample of a packed row on its own (see the module docstring)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = _sample_bounds(module, query, key, attention_mask, kwargs)
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs["is_causal"] = True
    pieces = [
        sdpa_attention_forward(
            module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, **kwargs
        )[0]
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
        if e > s
    ]
    return torch.cat(pieces, dim=1), None


def windows_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The vision tower's attention: query/key/value (1, H, N, Dh), `cu_seq_lens_q` (W + 1,) the
    window (or image) boundaries -> ((1, N, H, Dh), None). Each window attends to itself only, all
    windows of one length in one sdpa call. Without boundaries (or with a mask, a batch, a causal
    module): transformers' `sdpa_attention_forward` unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    if (
        cu is None
        or attention_mask is not None
        or query.shape[0] != 1
        or key.shape[1] != query.shape[1]
        or kwargs.get("is_causal", getattr(module, "is_causal", False))
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (N, H, Dh)
    dropout = float(kwargs.get("dropout", 0.0)) if module.training else 0.0
    scale = kwargs.get("scaling")
    groups = _window_groups(cu, q.shape[0])
    if not groups:  # no token at all
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    if len(groups) == 1:  # every window the same length: a reshape, no gather
        count = q.shape[0] // groups[0].shape[1]
        windows = [t.reshape(count, -1, *t.shape[1:]).transpose(1, 2) for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(
            *windows, dropout_p=dropout, scale=scale
        )
        return out.transpose(1, 2).reshape(1, *q.shape), None
    order, pieces = [], []
    for index in groups:
        index = index.to(query.device)
        windows = [t[index].transpose(1, 2) for t in (q, k, v)]  # (W_l, H, l, Dh)
        out = torch.nn.functional.scaled_dot_product_attention(
            *windows, dropout_p=dropout, scale=scale
        )
        pieces.append(out.transpose(1, 2).flatten(0, 1))  # (W_l * l, H, Dh)
        order.append(index.flatten())
    out = torch.cat(pieces).index_select(0, torch.argsort(torch.cat(order)))
    return out.unsqueeze(0), None


def _window_groups(cu: torch.Tensor, length: int) -> list[torch.Tensor]:
    """Token indices (W_l, l) of the windows of each length l in boundaries `cu` (W + 1,), in
    order of length."""
    bounds = cu.detach().to("cpu", torch.long)
    if int(bounds[0]) != 0 or int(bounds[-1]) != length:
        raise ValueError(f"window boundaries {bounds.tolist()} do not cover {length} tokens")
    starts, sizes = bounds[:-1], bounds[1:] - bounds[:-1]
    return [
        starts[sizes == size][:, None] + torch.arange(size)
        for size in torch.unique(sizes).tolist()
        if size > 0
    ]


def varlen_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """No mask where no sample has padding (packed rows, one sequence, decoding without padding):
    the attention function separates packed samples itself. Otherwise `sdpa_mask`'s mask."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None or (attention_mask.dim() == 2 and bool(attention_mask.all())):
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        **kwargs,
    )


def varlen_kwargs(cu_seqlens: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The keywords that carry a packed row's sample boundaries (`cu_seqlens`, (B + 1,)) to the
    attention: transformers' flash-attention names, which `varlen_attention_forward` reads too."""
    cu = cu_seqlens.to(device=device, dtype=torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return {
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def register_varlen_attention() -> None:
    """Register `ATTN_VARLEN` with transformers' attention and mask interfaces and `ATTN_WINDOWS`
    with the attention interface (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(ATTN_VARLEN, varlen_mask)
    AttentionInterface.register(ATTN_WINDOWS, windows_attention_forward)


def _sample_bounds(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> list[int] | None:
    """Sample boundaries [0, ..., L] of a packed causal row, or None when the row is not one."""
    length = query.shape[2]
    if (
        attention_mask is not None
        or query.shape[0] != 1
        or length < 2
        or key.shape[2] != length
        or not kwargs.get("is_causal", getattr(module, "is_causal", True))
    ):
        return None
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        bounds = [int(b) for b in cu.tolist()]
    else:
        positions = kwargs.get("position_ids")
        if positions is None:
            return None
        text = positions.reshape(-1, positions.shape[-1])[0]
        if text.shape[0] != length:
            return None
        starts = (torch.nonzero(text[1:] != text[:-1] + 1).flatten() + 1).tolist()
        if not starts:
            return None
        bounds = [0, *starts, length]
    if bounds[0] != 0 or bounds[-1] != length:
        raise ValueError(f"packed sample boundaries {bounds} do not cover a row of {length} tokens")
    return bounds
