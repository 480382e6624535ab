"""Small fake copies of every dataset layout in docs/datasets.md,
for converter tests.  Each ``write_<dataset>(root)`` returns the folder to pass to
``bus-nnunet convert`` and a dict of facts the tests check (counts, special cases).

Images are small noisy grey frames with a dark disc (the "lesion"); masks are 0/255 discs in the
encodings the real releases use (mode '1', RGBA, JPEG, anti-aliased, oversized...)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def frame(rng, shape, lesion=None) -> np.ndarray:
    """A uint8 grey ultrasound-like frame, darker inside ``lesion``."""
    img = rng.integers(60, 200, shape).astype(np.uint8)
    if lesion is not None:
        img[lesion] = rng.integers(5, 40, int(lesion.sum()))
    return img


def save_l(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def mask255(m) -> np.ndarray:
    return m.astype(np.uint8) * 255


def random_disc(rng, shape, scale=0.2):
    h, w = shape
    r = int(min(h, w) * scale)
    return disc(shape, (int(rng.integers(r + 1, h - r - 1)), int(rng.integers(r + 1, w - r - 1))), r)


# --------------------------------------------------------------------------------------------
def write_busi(root, n_benign=8, n_malignant=5, n_normal=3, shape=(48, 64), seed=0):
    """BUSI: ``benign (195)`` with non-overlapping ``_mask_1`` and ``_mask_2``, ``benign (4)`` whose
    ``_mask_1`` overlaps the base mask, an RGBA mask (``malignant (2)``), mode '1' masks,
    all-zero RGB masks for normal images, RGB images with equal channels."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "Dataset_BUSI_with_GT"
    numbers = {"benign": [1, 2, 3, 4, 195] + list(range(10, 10 + n_benign - 5)),
               "malignant": list(range(1, n_malignant + 1)), "normal": list(range(1, n_normal + 1))}
    expected = {}
    for cls, ids in numbers.items():
        for n in ids:
            stem = f"{cls} ({n})"
            folder = base / cls
            folder.mkdir(parents=True, exist_ok=True)
            masks = []
            if cls != "normal":
                masks.append(disc(shape, (16, 16), 8))
                if stem == "benign (195)":
                    masks += [disc(shape, (34, 48), 6), disc(shape, (12, 50), 5)]
                if stem == "benign (4)":
                    masks.append(disc(shape, (20, 22), 8))  # overlaps the base mask
            union = np.zeros(shape, bool)
            for m in masks:
                union |= m
            img = frame(rng, shape, union)
            Image.fromarray(img).convert("RGB").save(folder / f"{stem}.png")
            if cls == "normal":
                Image.fromarray(np.zeros(shape, np.uint8)).convert("RGB").save(folder / f"{stem}_mask.png")
            for j, m in enumerate(masks):
                name = folder / f"{stem}_mask{'' if j == 0 else '_' + str(j)}.png"
                if stem == "malignant (2)":
                    rgba = np.stack([mask255(m)] * 3 + [np.full(shape, 255, np.uint8)], -1)
                    Image.fromarray(rgba, "RGBA").save(name)
                elif j % 2:
                    Image.fromarray(m).convert("1").save(name)
                else:
                    Image.fromarray(mask255(m)).save(name)
            expected[f"busi_{cls}_{n:04d}"] = union
    facts = {"n_lesion": len(numbers["benign"]) + len(numbers["malignant"]), "n_normal": n_normal,
             "merged": ["busi_benign_0195", "busi_benign_0004"], "labels": expected}
    return base.parent, facts


def _write_xlsx(path, sheets):
    import pandas as pd
    with pd.ExcelWriter(path) as writer:
        for name, frame_ in sheets.items():
            frame_.to_excel(writer, sheet_name=name, index=False)


BREAST_COLUMNS = ["CaseID", "Image_filename", "Mask_tumor_filename", "Mask_other_filename", "Pixel_size", "Age",
                  "Tissue_composition", "Signs", "Symptoms", "Shape", "Margin", "Echogenicity",
                  "Posterior_features", "Halo", "Calcifications", "Skin_thickening", "Interpretation", "BIRADS",
                  "Verification", "Diagnosis", "Classification"]


def write_breast(root, shape=(48, 64), seed=1, n_extra=6):
    """BrEaST: RGBA ``case001.png``, ``case002`` with ``_other1`` and ``_other2`` (not the lesion),
    normal ``case045`` without mask, the clinical xlsx with the truncated sheet name."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    folder = Path(root) / "BrEaST-Lesions_USG-images_and_masks"
    folder.mkdir(parents=True)
    rows = []
    numbers = [1, 2, 45] + list(range(100, 100 + n_extra))
    labels = {}
    for i, n in enumerate(numbers):
        cls = "normal" if n == 45 else ("malignant" if i % 3 == 1 else "benign")
        tumor = random_disc(rng, shape) if cls != "normal" else None
        img = frame(rng, shape, tumor)
        stem = f"case{n:03d}"
        if n == 1:
            Image.fromarray(np.stack([img] * 3 + [np.full(shape, 255, np.uint8)], -1), "RGBA").save(folder / f"{stem}.png")
        else:
            save_l(folder / f"{stem}.png", img)
        others = ""
        if tumor is not None:
            save_l(folder / f"{stem}_tumor.png", mask255(tumor))
        if n == 2:
            for k, centre in ((1, (5, 5)), (2, (40, 58))):
                save_l(folder / f"{stem}_other{k}.png", mask255(disc(shape, centre, 4)))
            others = f"{stem}_other1.png&{stem}_other2.png"
        labels[f"breast_{stem}"] = tumor if tumor is not None else np.zeros(shape, bool)
        row = {c: "" for c in BREAST_COLUMNS}
        row.update(CaseID=n, Image_filename=f"{stem}.png", Mask_tumor_filename=f"{stem}_tumor.png" if tumor is not None
                   else np.nan, Mask_other_filename=others or np.nan, Pixel_size=0.007, Age=50,
                   BIRADS={"normal": 1, "benign": 3, "malignant": "4c"}[cls], Classification=cls)
        rows.append(row)
    _write_xlsx(Path(root) / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx",
                {"BrEaST-Lesions-USG clinical dat": pd.DataFrame(rows, columns=BREAST_COLUMNS),
                 "Data Dictionary": pd.DataFrame({"a": [1]})})
    return Path(root), {"n": len(numbers), "n_other": 2, "labels": labels, "normal": ["breast_case045"]}


def write_udiat(root, shape=(40, 50), seed=2):
    """UDIAT: non-contiguous ids (1..4 and 295..297), DatasetB.xlsx sheet Hoja1 with legend columns."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    base = Path(root) / "BUS"
    ids = [1, 2, 3, 4, 295, 296, 297]
    rows = []
    for i, n in enumerate(ids):
        m = random_disc(rng, shape)
        save_l(base / "original" / f"{n:06d}.png", frame(rng, shape, m))
        save_l(base / "GT" / f"{n:06d}.png", mask255(m))
        rows.append({"Image": n, "Type": "Malignant" if i % 3 == 0 else "Benign", "Diagnosis": "IDC" if i % 3 == 0
                     else "FA", "Unnamed1": np.nan, "Unnamed2": np.nan, "Llegend": "FA" if i == 0 else np.nan,
                     "Legend text": "Fibroadenoma" if i == 0 else np.nan})
    _write_xlsx(base / "DatasetB.xlsx", {"Hoja1": pd.DataFrame(rows)})
    return Path(root), {"n": len(ids), "ids": [f"udiat_{n:06d}" for n in ids]}


def write_stu(root, seed=3, n=6):
    """STU: 128×128 images; masks at 420×420 with anti-aliased edges, one pair at matching size."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "STU-Hospital-master" / "Hospital"
    resized = 0
    for k in range(1, n + 1):
        m128 = disc((128, 128), (64, 60), 30)
        save_l(folder / f"Test_Image_{k}.png", frame(rng, (128, 128), m128))
        if k == 1:
            save_l(folder / f"mask_{k}.png", mask255(m128))
        else:
            size = 420 if k % 2 else 512
            big = Image.fromarray(mask255(disc((size, size), (size * 64 // 128, size * 60 // 128), size * 30 // 128)))
            big = big.filter(ImageFilter.GaussianBlur(2))  # grey, anti-aliased edges
            big.save(folder / f"mask_{k}.png")
            resized += 1
    return folder.parent, {"n": n, "resized": resized}


def write_busis(root, shape=(40, 56), seed=4, n=7):
    """BUSIS: ``imgs/caseNNNN.png`` + ``GT/caseNNNN_GT.png`` (one ``.bmp`` GT) and BUSIS562.csv."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "BUSIS"
    lines = ["img name,Ground Truth Name,tumor type"]
    for k in range(1, n + 1):
        m = random_disc(rng, shape)
        save_l(base / "imgs" / f"case{k:04d}.png", frame(rng, shape, m))
        ext = ".bmp" if k == 2 else ".png"
        (base / "GT").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask255(m)).save(base / "GT" / f"case{k:04d}_GT{ext}")
        lines.append(f"case{k:04d},case{k:04d}_GT,{'M' if k % 3 == 0 else 'B'}")
    (base / "BUSIS562.csv").write_text("\n".join(lines) + "\n")
    return base, {"n": n, "malignant": n // 3}


def write_busbra(root, shape=(44, 52), seed=5):
    """BUS-BRA: two-view patients (-l/-r) and single-view (-s), mode '1' masks, bus_data.csv,
    5-fold-cv.csv whose kFold keeps patients together."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "BUSBRA"
    ids = ["0001-l", "0001-r", "0002-s", "0003-l", "0003-r", "0004-s", "0005-s", "0006-l", "0006-r", "0007-s"]
    data = ["ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX"]
    folds = ["ID,Pathology,kFold,valid_1,valid_2,valid_3,valid_4,valid_5"]
    fold_of = {}
    for key in ids:
        patient = int(key[:4])
        m = random_disc(rng, shape)
        save_l(base / "Images" / f"bus_{key}.png", frame(rng, shape, m))
        (base / "Masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).convert("1").save(base / "Masks" / f"mask_{key}.png")
        path = "malignant" if patient % 3 == 0 else "benign"
        data.append(f'bus_{key},{patient},fibroadenoma,{path},{4 if path == "malignant" else 3},GE Logiq 7,'
                    f'{shape[1]},{shape[0]},left,"[1,1,5,5]"')
        k = (patient - 1) % 5 + 1
        fold_of[f"busbra_{key}"] = k - 1
        folds.append(f"bus_{key},{path},{k}," + ",".join("NaN" if j == k else "1" for j in range(1, 6)))
    (base / "bus_data.csv").write_text("\n".join(data) + "\n")
    (base / "5-fold-cv.csv").write_text("\n".join(folds) + "\n")
    return Path(root), {"n": len(ids), "fold_of": fold_of}


def _save_jpeg(path, arr, quality=75):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path, quality=quality)


def write_tn3k(root, n_trainval=10, n_test=4, seed=6):
    """TN3K: JPEG images and masks (JPEG noise), overlapping stems in trainval and test,
    fold JSONs ``val = i % 5``, label4*.csv."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "Thyroid Dataset" / "tn3k"
    truth = {}
    for subset, n in (("trainval", n_trainval), ("test", n_test)):
        labels = []
        for i in range(n):
            shape = (40 + 4 * (i % 3), 56)
            m = random_disc(rng, shape, 0.25)
            _save_jpeg(base / f"{subset}-image" / f"{i:04d}.jpg", frame(rng, shape, m))
            _save_jpeg(base / f"{subset}-mask" / f"{i:04d}.jpg", mask255(m))
            labels.append(f"{i:04d}.jpg,{i % 2}")
            truth[f"tn3k_{subset}_{i:04d}"] = m
        (base / f"label4{subset}.csv").write_text("\n".join(labels) + "\n")
    for k in range(5):
        spec = {"val": [i for i in range(n_trainval) if i % 5 == k], "train": [i for i in range(n_trainval) if i % 5 != k]}
        (base / f"tn3k-trainval-fold{k}.json").write_text(json.dumps(spec))
    return base.parent, {"n_trainval": n_trainval, "n_test": n_test, "labels": truth}


def write_tg3k(root, seed=7):
    """TG3K: capitalised ``Thyroid-image``/``Thyroid-mask`` JPEGs in runs of constant resolution
    (videos), ``tg3k-trainval.json`` whose split straddles a run."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "tg3k"
    runs = [(36, 48)] * 6 + [(40, 52)] * 6 + [(38, 50)] * 5
    for i, shape in enumerate(runs):
        m = random_disc(rng, shape, 0.3)
        _save_jpeg(base / "Thyroid-image" / f"{i:04d}.jpg", frame(rng, shape, m))
        _save_jpeg(base / "Thyroid-mask" / f"{i:04d}.jpg", mask255(m))
    split = {"train": list(range(0, 9)), "val": list(range(9, len(runs)))}  # cuts the second run
    (base / "tg3k-trainval.json").write_text(json.dumps(split))
    return Path(root), {"n": len(runs), "videos": 3}


def write_ddti_processed(root, n=7, seed=8):
    """Processed DDTI: ``1_or_data/image/N.PNG`` (upper-case extension, unpadded ids), 0/255 masks,
    ``category.csv``, plus the ``2_preprocessed_data`` folder that must be ignored."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "DDTI" / "1_or_data"
    ids = [1, 3, 10, 100, 10004, 20024, 5][:n]
    for k in ids:
        shape = (36, 48)
        m = random_disc(rng, shape)
        save_l(base / "image" / f"{k}.PNG", frame(rng, shape, m))
        save_l(base / "mask" / f"{k}.PNG", mask255(m))
    (base / "category.csv").write_text("ID,CATE\n" + "".join(f"{k}.PNG,{k % 2}\n" for k in ids))
    save_l(Path(root) / "DDTI" / "2_preprocessed_data" / "stage1" / "p_image" / "1.PNG", np.zeros((8, 8)))
    return Path(root) / "DDTI", {"n": len(ids)}


def write_ddti_original(root, seed=9):
    """Original DDTI: ``N.xml`` with polygons for ``N_k.jpg``; case 1 has two regions in one image,
    ``197.xml`` has truncated JSON, case 8 has an XML without <mark>."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "archive"
    folder.mkdir(parents=True)
    shape = (40, 60)
    square = lambda x0, y0, s: [{"x": x0, "y": y0}, {"x": x0 + s, "y": y0}, {"x": x0 + s, "y": y0 + s},  # noqa: E731
                                {"x": x0, "y": y0 + s}]
    expected = {}

    def case(number, marks, truncated=False):
        parts = [f"<?xml version='1.0' encoding='utf-8'?><case><number>{number}</number><age>40</age><sex>F</sex>"
                 f"<tirads>4a</tirads>"]
        for k, regions in marks.items():
            svg = json.dumps([{"points": pts, "annotation": {}, "regionType": "freehand"} for pts in regions])
            if truncated:
                svg = svg[: svg.rindex('"regionType"')]
            parts.append(f"<mark><image>{k}</image><svg>{svg}</svg></mark>")
            img_mask = Image.new("L", (shape[1], shape[0]), 0)
            draw = ImageDraw.Draw(img_mask)
            for pts in regions:
                draw.polygon([(p["x"], p["y"]) for p in pts], fill=255, outline=255)
            m = np.asarray(img_mask) > 0
            _save_jpeg(folder / f"{number}_{k}.jpg", frame(rng, shape, m))
            expected[f"ddti_{number:04d}_{k}"] = m
        (folder / f"{number}.xml").write_text("".join(parts) + "</case>")

    case(1, {1: [square(5, 5, 10), square(30, 20, 12)], 2: [square(20, 10, 15)]})
    for n in (2, 3, 4, 5):
        case(n, {1: [square(8 + n, 6, 14)]})
    case(197, {1: [square(12, 12, 10)]}, truncated=True)
    (folder / "8.xml").write_text("<case><number>8</number><tirads>2</tirads></case>")
    _save_jpeg(folder / "8_1.jpg", frame(rng, shape))
    return Path(root), {"n": len(expected), "labels": expected, "multi_region": "ddti_0001_1"}


def write_folder(root, n=6, shape=(32, 40), seed=10, images_per_patient=0):
    """Generic ``images/NAME.png`` + ``masks/NAME_mask.png`` (one image with two masks); with
    ``images_per_patient``, a ``patient_id`` column groups that many consecutive images."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "mydata"
    lines = ["case,class" + (",patient_id" if images_per_patient else "")]
    for k in range(n):
        m = random_disc(rng, shape)
        save_l(base / "images" / f"img {k}.png", frame(rng, shape, m))
        save_l(base / "masks" / f"img {k}_mask.png", mask255(m))
        if k == 0:
            save_l(base / "masks" / f"img {k}_mask2.png", mask255(disc(shape, (4, 4), 3)))
        patient = f",p{k // images_per_patient}" if images_per_patient else ""
        lines.append(f"img {k},{'malignant' if (k // max(1, images_per_patient)) % 2 else 'benign'}{patient}")
    (base / "classes.csv").write_text("\n".join(lines) + "\n")
    return base, {"n": n}


REPLICAS = {
    "busi": write_busi, "breast": write_breast, "udiat": write_udiat, "stu": write_stu, "busis": write_busis,
    "busbra": write_busbra, "tn3k": write_tn3k, "tg3k": write_tg3k, "ddti": write_ddti_processed,
    "ddti-original": write_ddti_original, "folder": write_folder,
}
