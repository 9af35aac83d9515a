"""Synthetic BBU cabinet photos in the vendor "markResult" export format (demo, examples, tests).

Public API: `generate_raw_set(out_dir, n_images, *, seed, size, exif_rotated_every, jpeg_quality,
defect_rate, progress) -> list[Path]` writes `<stem>.jpeg` + `<stem>.json` pairs (`defect_rate`
balances the defect classes); `KNOWN_ZH_LABELS` and `LABELS` are the raw labels it writes. Each
object class has its own look and place, so that a small model can learn it: round cross-head
install screws on the BBU ears, coloured CPRI plugs with hanging fibres in a row on one BBU board,
blue ODF adapters with yellow pigtails on a light panel, hex bolts on a copper ground bar, a plate
per BBU vendor (plain shapes, no real logos), perforated grey wind shields above and below each BBU
(or a dark empty gap, annotated as not installed), and white barcode label stickers (a red dot when
mismatched).

Files: `raw_set` (writing, vendor format, EXIF, stems), `scene` (layout, lighting), `parts`
(drawing of each piece of equipment), `canvas` (drawing canvas, annotation record, label table).
"""

from __future__ import annotations

from bbucli.demo.synthetic.canvas import LABELS, SyntheticObject
from bbucli.demo.synthetic.raw_set import KNOWN_ZH_LABELS, generate_raw_set, orientation_for_index
from bbucli.demo.synthetic.scene import render_scene

__all__ = [
    "KNOWN_ZH_LABELS",
    "LABELS",
    "SyntheticObject",
    "generate_raw_set",
    "orientation_for_index",
    "render_scene",
]
