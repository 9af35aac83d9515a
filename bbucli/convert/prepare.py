"""One annotated image -> its canonical objects in the stored (resized) frame, or the reason not.

Steps for a `RawImage`, each failure an `Issue` (see `raw.REASONS`):
1. read the image header: upright size (EXIF applied) -> `unreadable_image`;
2. reconcile the declared frame with it (`frames.reconcile`) -> `size_mismatch` drops the image,
   `exif_frame` / `size_rescaled` are noted and the boxes mapped;
3. the stored size: `geometry.resized_wh` (the smart_resize fixed point) -> `bad_aspect_ratio`;
4. per object: label through the taxonomy (`unknown_label`: drop, keep as-is, or DataError), box
   to the upright frame, clipped to it (`clipped` when more than 1 px is cut, `out_of_frame` when
   nothing is left), scaled once to the stored frame with `geometry.scale_box_xyxy`;
5. an object equal to an earlier one (desc and stored box) -> `duplicate_object`, dropped;
6. no object left -> `no_objects` drops the image.
Frames: raw boxes are original pixels of the declared frame; `PreparedImage.objects` are integer
xyxy pixels of the stored image of size `stored_wh`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bbucli.convert.frames import FrameFix, exif_orientation, reconcile
from bbucli.convert.images import read_image_size
from bbucli.convert.raw import Issue, RawImage, RawObject
from bbucli.convert.report import Tally
from bbucli.errors import DataError
from bbucli.geometry import clip_box_xyxy, resized_wh, scale_box_xyxy
from bbucli.schema import DetObject, sort_objects
from bbucli.taxonomy import Lang, Taxonomy

CLIP_TOLERANCE_PX = 1.0
UnknownPolicy = Literal["keep", "drop", "error"]


@dataclass(frozen=True)
class LabelPolicy:
    """How raw labels become descs: taxonomy, language, levels, and what to do with unknowns."""

    taxonomy: Taxonomy
    lang: Lang = "zh"
    levels: int = 3
    unknown: UnknownPolicy = "drop"


@dataclass(frozen=True)
class PreparedImage:
    """An image ready to resize: `objects` integer xyxy in the `stored_wh` frame, sorted."""

    raw: RawImage
    source_rel: str
    orig_wh: tuple[int, int]
    stored_wh: tuple[int, int]
    objects: tuple[DetObject, ...]

    @property
    def stem(self) -> str:
        """The image's identity in the dataset: its stored `images/<stem>.jpeg` and episode id."""
        return self.raw.unique_stem or self.raw.stem


def _desc(obj: RawObject, policy: LabelPolicy, rel: str, where: str, tally: Tally) -> str | None:
    for label in (obj.label, *obj.fallback_labels):
        cls = policy.taxonomy.resolve(label)
        if cls is not None:
            return cls.desc(policy.lang, policy.levels)
    tally.unknown[obj.label] += 1
    if policy.unknown == "error":
        raise DataError(
            f"{rel}: unknown label {obj.label!r} ({where})",
            hint="add it to the taxonomy (--taxonomy FILE) or pass --unknown drop|keep",
        )
    keep = policy.unknown == "keep"
    action = "kept as-is" if keep else "dropped"
    tally.note(Issue("unknown_label", rel, f"{where}: {obj.label!r} {action}", 0 if keep else 1))
    return " ".join(obj.label.split()) if keep else None


def _objects(
    raw: RawImage,
    fix: FrameFix,
    orig_wh: tuple[int, int],
    stored_wh: tuple[int, int],
    policy: LabelPolicy,
    rel: str,
    tally: Tally,
) -> list[DetObject]:
    """Objects of `raw` mapped to integer xyxy pixels of the stored frame (`stored_wh`). An object
    with the desc and stored box of one kept before is dropped (`duplicate_object`): two equal
    targets would make the matcher pair one and score the other as a miss."""
    kept: list[DetObject] = []
    first: dict[DetObject, str] = {}
    for i, obj in enumerate(raw.objects):
        where = (obj.ref or f"object {i}") + (f" of {raw.image_ref}" if raw.image_ref else "")
        desc = _desc(obj, policy, rel, where, tally)
        if desc is None:
            continue
        upright = fix.to_upright(obj.box_xyxy)
        clipped = clip_box_xyxy(upright, orig_wh)
        shown = [round(v, 1) for v in upright]
        ordered = (min(upright[0], upright[2]), min(upright[1], upright[3]), max(upright[0], upright[2]), max(upright[1], upright[3]))
        cut = clipped is not None and max(abs(a - b) for a, b in zip(ordered, clipped, strict=True)) > CLIP_TOLERANCE_PX
        if clipped is None or (cut and min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < 1.0):
            # nothing, or a sliver under a pixel, of the box lies inside the image
            tally.note(Issue("out_of_frame", rel, f"{where} ({obj.label}): box {shown} outside {orig_wh}", 1))
            continue
        if cut:
            tally.note(Issue("clipped", rel, f"{where} ({obj.label}): box {shown} clipped to {orig_wh}"))
        det = DetObject(scale_box_xyxy(clipped, orig_wh, stored_wh), desc)
        if det in first:
            tally.note(Issue("duplicate_object", rel, f"{where} ({obj.label}): same box and label as {first[det]}", 1))
            continue
        first[det] = obj.ref or f"object {i}"
        kept.append(det)
    return kept


def prepare_image(
    raw: RawImage,
    ann_rel: str,
    image_rel: str,
    policy: LabelPolicy,
    min_pixels: int,
    max_pixels: int,
    tally: Tally,
) -> PreparedImage | None:
    """Check one paired `RawImage` and map its objects (module docstring); None when the image
    is dropped, with the reason in `tally`. `ann_rel`/`image_rel` name the annotation and image
    files relative to the input folder. Raises DataError only for `unknown="error"`."""
    if raw.image_path is None:
        raise ValueError("prepare_image needs a RawImage paired with its image file")
    n = len(raw.objects)
    tally.objects_found += n
    of = f" ({raw.image_ref})" if raw.image_ref else ""
    try:
        orig_wh = read_image_size(raw.image_path)
    except DataError as exc:
        detail = exc.message.replace(str(raw.image_path), image_rel)
        tally.note(Issue("unreadable_image", image_rel, detail, n, image_dropped=True))
        return None
    declared = (raw.width, raw.height) if raw.width and raw.height else None
    orientation = exif_orientation(raw.image_path) if declared and declared != orig_wh else 1
    fix = reconcile(declared, orig_wh, orientation)
    if fix.kind == "mismatch":
        tally.note(Issue("size_mismatch", ann_rel, fix.detail + of, n, image_dropped=True))
        return None
    if fix.kind == "exif":
        tally.note(Issue("exif_frame", ann_rel, fix.detail + of))
    elif fix.kind == "rescaled":
        tally.note(Issue("size_rescaled", ann_rel, fix.detail + of))
    try:
        stored_wh = resized_wh(orig_wh, min_pixels, max_pixels)
    except ValueError as exc:
        tally.note(Issue("bad_aspect_ratio", image_rel, str(exc), n, image_dropped=True))
        return None
    objects = _objects(raw, fix, orig_wh, stored_wh, policy, ann_rel, tally)
    if not objects:
        detail = "no object annotated" if n == 0 else f"all {n} objects dropped"
        tally.note(Issue("no_objects", ann_rel, detail + of, image_dropped=True))
        return None
    return PreparedImage(raw, image_rel, orig_wh, stored_wh, sort_objects(objects))
