"""DDTI thyroid nodules (Pedraza et al., SPIE 2015), in either distribution:

* processed (TN-SCUI format): ``1_or_data/image/N.PNG`` + ``1_or_data/mask/N.PNG`` (0/255 or 0/1).
  Its ``category.csv`` is declared forged by the release itself, so no class is written.
* original: ``{case}.xml`` (TI-RADS, polygons in ``<mark><image>k</image><svg>[...]</svg>``) and
  ``{case}_{k}.jpg``; every polygon of an image is filled (OR-merged).  Truncated JSON (197.xml,
  205.xml) is salvaged; images without annotation are reported and left out."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image, ImageDraw

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, files_with_suffix, find_child_dir,
                                                locate_root, require_pairs)
from bus_nnunet.errors import UserError


def _is_processed(folder: Path) -> bool:
    return find_child_dir(folder, "image") is not None and find_child_dir(folder, "mask") is not None


def _is_original(folder: Path) -> bool:
    return any(p.stem.isdigit() for p in folder.glob("*.xml"))


def _collect_processed(root: Path) -> Collection:
    images = {int(p.stem): p for p in files_with_suffix(find_child_dir(root, "image"), [".png"]) if p.stem.isdigit()}
    masks = {int(p.stem): p for p in files_with_suffix(find_child_dir(root, "mask"), [".png"]) if p.stem.isdigit()}
    require_pairs(images, masks, "DDTI masks without an image", "DDTI images without a mask")
    cases = [Case(case_id=f"ddti_{n:05d}", image=images[n], masks=[masks[n]], extra={"source_id": images[n].name})
             for n in sorted(images)]
    return Collection(cases=cases, notes=["processed DDTI: renumbered images, no patient ids; category.csv is forged "
                                          "(per its readme) so no class is written"])


def _parse_svg(text: str, where: str) -> List[List[tuple]]:
    text = (text or "").strip()
    if not text:
        return []
    try:
        regions = json.loads(text)
    except ValueError:
        try:  # known truncation (197.xml, 205.xml): close the last region
            regions = json.loads(text + '"regionType": "freehand"}]')
        except ValueError as e:
            raise UserError(f"{where}: cannot parse the <svg> polygon list: {e}") from e
    polygons = []
    for region in regions:
        points = [(float(p["x"]), float(p["y"])) for p in region.get("points", [])]
        if len(points) >= 3:
            polygons.append(points)
    return polygons


def _polygon_loader(polygons):
    def load(size_wh):
        canvas = Image.new("L", size_wh, 0)
        draw = ImageDraw.Draw(canvas)
        for poly in polygons:
            draw.polygon(poly, fill=255, outline=255)
        return np.asarray(canvas) > 0
    return load


def _collect_original(root: Path, collection: Collection) -> Collection:
    import xml.etree.ElementTree as ET
    annotated = set()
    for xml_path in sorted(root.glob("*.xml"), key=lambda p: (len(p.stem), p.stem)):
        if not xml_path.stem.isdigit():
            continue
        text = xml_path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ET.fromstring(text)
            tirads = (tree.findtext("tirads") or "").strip()
            marks = [(m.findtext("image"), m.findtext("svg")) for m in tree.iter("mark")]
        except ET.ParseError:  # salvage: read the marks with a regex
            tirads = (re.search(r"<tirads>(.*?)</tirads>", text, re.S) or [None, ""])[1].strip()
            marks = re.findall(r"<image>\s*(\d+)\s*</image>\s*<svg>(.*?)(?:</svg>|</mark>|$)", text, re.S)
        if not marks:
            collection.counters["ddti_xml_without_marks"] += 1
            continue
        for image_no, svg in marks:
            image_no = (image_no or "").strip()
            image = root / f"{xml_path.stem}_{image_no}.jpg"
            if not image.is_file():
                collection.warnings.append(f"{xml_path.name} annotates {image.name}, which is missing")
                continue
            polygons = _parse_svg(svg, f"{xml_path} image {image_no}")
            if not polygons:
                collection.counters["ddti_empty_marks"] += 1
                continue
            annotated.add(image.name)
            collection.counters["merged_masks"] += len(polygons) > 1  # several nodules: polygons OR-merged
            collection.cases.append(Case(
                case_id=f"ddti_{int(xml_path.stem):04d}_{int(image_no)}", image=image, masks=[],
                mask_loader=_polygon_loader(polygons), patient_id=f"ddti_{int(xml_path.stem):04d}", birads=tirads,
                extra={"source_id": image.name, "source_annotation": xml_path.name, "n_polygons": len(polygons),
                       "tirads": tirads}))
    unannotated = [p.name for p in sorted(root.glob("*.jpg")) if p.name not in annotated]
    if unannotated:
        collection.warnings.append(f"{len(unannotated)} images have no usable polygon and are left out "
                                   f"(e.g. {unannotated[:3]})")
    if collection.counters["ddti_xml_without_marks"] or collection.counters["ddti_empty_marks"]:
        collection.warnings.append(f"{collection.counters['ddti_xml_without_marks']} XML files without <mark> and "
                                   f"{collection.counters['ddti_empty_marks']} empty <svg> entries skipped")
    collection.notes.append("original DDTI: polygons rasterised and OR-merged; case = patient (folds grouped); "
                            "TI-RADS in the birads column")
    return collection


def collect(source: Path, options) -> Collection:
    def is_root(folder):
        return _is_processed(folder) or _is_original(folder)
    root = locate_root(source, is_root, "DDTI (1_or_data/ with image/ and mask/, or the original N.xml + N_k.jpg)")
    if _is_processed(root):
        return _collect_processed(root)
    return _collect_original(root, Collection(cases=[]))


INFO = DatasetInfo(
    key="ddti", default_id=512, default_name="DDTI", collect=collect,
    reference="Pedraza L, et al. An open access thyroid ultrasound image database. Proc SPIE 9287 (2015) 92870W",
    license="open access (CIM@LAB)",
    description="DDTI thyroid nodule ultrasound.")
