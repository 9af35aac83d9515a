"""Fixture `rawset`: small raw annotation sets on disk: real JPEGs (PIL) and JSON in each format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageDraw

SCREW_ZH = "连接点（螺丝）/BBU安装螺丝/连接正确"
SCREW_EN = "connection_point/install_screw/install_screw_true"
BRAND_ZH = "BBU品牌/华为"
SHIELD_ZH = "挡风板/未安装"

# The transpose that turns upright pixels into the stored ones for an EXIF orientation
# (exif_transpose applies the inverse).
_STORE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


class RawSet:
    """Builder of a raw folder under `root`; paths are relative to it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def jpeg(self, rel: str, wh=(280, 210), orientation: int = 1, red_box=None) -> Path:
        """A JPEG whose upright size is `wh`; `red_box` (upright xyxy) is painted red on grey."""
        image = Image.new("RGB", wh, (128, 128, 128))
        if red_box is not None:
            ImageDraw.Draw(image).rectangle(
                [red_box[0], red_box[1], red_box[2] - 1, red_box[3] - 1], fill=(255, 0, 0)
            )
        kwargs = {"quality": 90}
        if orientation != 1:
            image = image.transpose(_STORE[orientation])
            exif = Image.Exif()
            exif[ExifTags.Base.Orientation] = orientation
            kwargs["exif"] = exif.tobytes()
        path = self.path(rel)
        image.save(path, "JPEG", **kwargs)
        return path

    def json(self, rel: str, data) -> Path:
        path = self.path(rel)
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return path

    def vendor(
        self, stem: str, wh=(280, 210), objects=None, image=True, info_wh=None, **jpeg
    ) -> Path:
        """`<stem>.json` (markResult) + `<stem>.jpeg`; objects: (box, zh label[, en label])."""
        objects = [((20, 30, 60, 80), SCREW_ZH, SCREW_EN)] if objects is None else objects
        if image:
            self.jpeg(f"{stem}.jpeg", wh, **jpeg)
        features = []
        for obj in objects:
            box, zh = obj[0], obj[1]
            en = obj[2] if len(obj) > 2 else None
            x1, y1, x2, y2 = box
            props = {
                "contentZh": {"标签": zh} if zh else {},
                "content": {"label": en} if en else {},
            }
            ring = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "ExtentPolygon", "coordinates": [ring]},
                    "properties": props,
                }
            )
        iw, ih = info_wh or wh
        data = {
            "info": {"width": iw, "height": ih},
            "markResult": {"type": "FeatureCollection", "features": features},
            "statistcs": {"count": len(features)},
            "workload": {"rect": len(features)},
        }
        return self.json(f"{stem}.json", data)

    def labelme(self, stem: str, wh=(280, 210), shapes=None, image_rel=None) -> Path:
        shapes = (
            shapes
            if shapes is not None
            else [{"label": SCREW_ZH, "points": [[60, 80], [20, 30]], "shape_type": "rectangle"}]
        )
        image_rel = image_rel or f"{Path(stem).name}.jpg"
        self.jpeg(str(Path(stem).parent / image_rel), wh)
        return self.json(
            f"{stem}.json",
            {
                "version": "5.4.1",
                "shapes": shapes,
                "imagePath": image_rel,
                "imageWidth": wh[0],
                "imageHeight": wh[1],
                "imageData": None,
            },
        )

    def coco(
        self, rel: str, images: list[tuple[str, tuple[int, int]]], annotations, categories
    ) -> Path:
        """COCO file at `rel`; each image is written beside it (`file_name` relative)."""
        folder = Path(rel).parent
        entries = []
        for i, (name, wh) in enumerate(images, start=1):
            self.jpeg(str(folder / name), wh)
            entries.append({"id": i, "file_name": name, "width": wh[0], "height": wh[1]})
        return self.json(
            rel, {"images": entries, "annotations": annotations, "categories": categories}
        )


@pytest.fixture
def rawset(tmp_path: Path) -> RawSet:
    return RawSet(tmp_path / "raw")
