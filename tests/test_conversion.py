"""``bus-nnunet convert``: real data from ../shared/data (skipped when absent), replicas of every
layout (tests/dataset_replicas.py), safe output, clear errors, and nnU-Net's own integrity check."""
import csv
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import _nnunet  # noqa: E402
import dataset_replicas as replicas  # noqa: E402

from bus_nnunet.cli import main  # noqa: E402
from bus_nnunet.dataset_conversion import get_converter  # noqa: E402
from bus_nnunet.dataset_conversion.pipeline import Options, convert  # noqa: E402
from bus_nnunet.image_io import read_mask  # noqa: E402
from bus_nnunet.errors import UserError  # noqa: E402


def run_convert(dataset, source, raw, *extra):
    code = main(["convert", dataset, str(source), "-o", str(raw), "--no-progress", *map(str, extra)])
    assert code == 0
    folders = sorted(Path(raw).glob("Dataset*"))
    assert len(folders) == 1
    return folders[0]


def manifest(folder):
    with open(folder / "manifest.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def label(folder, case_id, split="Tr"):
    return np.asarray(Image.open(folder / f"labels{split}" / f"{case_id}.png"))


def check_nnunet_layout(folder, n_train, n_test=0):
    """What nnU-Net and our tools rely on: one grey image + one {0,1} label per case, dataset.json
    counts, splits covering every training case once as validation."""
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "US"} and ds["file_ending"] == ".png" and ds["numTraining"] == n_train
    images = sorted((folder / "imagesTr").glob("*_0000.png"))
    labels = sorted((folder / "labelsTr").glob("*.png"))
    assert len(images) == len(labels) == n_train
    assert sorted(p.name[:-9] for p in images) == sorted(p.stem for p in labels)
    for img_path in images:  # every case, not a sample
        lab_path = folder / "labelsTr" / f"{img_path.name[:-9]}.png"
        img, lab = Image.open(img_path), Image.open(lab_path)
        assert img.mode == "L" and lab.mode == "L" and img.size == lab.size, img_path
        assert set(np.unique(np.asarray(lab))) <= {0, 1}, lab_path
    test_ids = {p.name[:-len("_0000.png")] for p in (folder / "imagesTs").glob("*_0000.png")}
    assert len(test_ids) == n_test
    splits = json.loads((folder / "splits_final.json").read_text())
    train_ids = {p.stem for p in labels}
    assert not test_ids & train_ids  # no test image leaks into training
    vals = [c for f in splits for c in f["val"]]
    assert sorted(vals) == sorted(train_ids)  # every training case validated exactly once
    for f in splits:
        assert set(f["train"]) | set(f["val"]) == train_ids and not set(f["train"]) & set(f["val"])
    rows = manifest(folder)
    assert len(rows) == n_train + n_test
    assert {c for c, r in rows.items() if r["split"] == "test"} == test_ids
    check_patients_kept_together(rows, splits)
    return rows, splits


def check_patients_kept_together(rows, splits):
    """Where the manifest has patient ids: no patient in two folds' validation sets, nor in both
    the hold-out test set and training."""
    patient = {c: r["patient_id"] for c, r in rows.items() if r.get("patient_id")}
    fold_of = {c: k for k, f in enumerate(splits) for c in f["val"]}
    seen = {}
    for case, pid in patient.items():
        where = ("test",) if rows[case]["split"] == "test" else ("fold", fold_of[case])
        assert seen.setdefault(pid, where) == where, f"patient {pid} spans {seen[pid]} and {where}"


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------
def test_busi_sample_real(shared_data, tmp_path):
    source = shared_data / "BUSI-sample"
    root = source / "Dataset_BUSI_with_GT"
    image_re = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$")
    images = [p for p in root.rglob("*.png") if image_re.match(p.name)]
    n_normal = sum(p.parent.name == "normal" for p in images)
    assert n_normal > 0
    summary = capture_summary("busi", source, tmp_path / "raw")
    folder = next((tmp_path / "raw").glob("Dataset*"))
    rows, _ = check_nnunet_layout(folder, len(images) - n_normal)
    assert f"{n_normal} normal cases left out (lesion cases only; --keep-normal includes them)" in summary
    assert folder.name == "Dataset501_BUSI"
    assert all(r["class"] in ("benign", "malignant") for r in rows.values())
    multi = {cid: r for cid, r in rows.items() if int(r["n_masks"]) > 1}
    assert "busi_benign_0195" in multi and int(multi["busi_benign_0195"]["n_masks"]) == 3
    assert len(multi) == 17  # every BUSI image with extra masks is in the sample
    for cid, row in multi.items():  # merged label == OR of the source masks (read independently)
        expected = np.zeros_like(label(folder, cid), bool)
        for m in row["source_masks"].split(";"):
            arr = np.asarray(Image.open(source / m).convert("L"))
            expected |= arr > 127
        np.testing.assert_array_equal(label(folder, cid), expected.astype(np.uint8))
    # --keep-normal adds the normal images with empty labels
    assert f"{n_normal} normal cases kept (--keep-normal)" in capture_summary(
        "busi", source, tmp_path / "raw2", "--keep-normal")
    kept = next((tmp_path / "raw2").glob("Dataset*"))
    rows2, _ = check_nnunet_layout(kept, len(images))
    normals = [c for c, r in rows2.items() if r["class"] == "normal"]
    assert len(normals) == n_normal and all(label(kept, c).max() == 0 for c in normals)


def test_breast_real_full(shared_data, tmp_path):
    # lesion cases only by default, as the papers use it (SS-Net: BrEaST 252)
    summary = capture_summary("breast", shared_data / "BrEaST", tmp_path / "raw")
    folder = next((tmp_path / "raw").glob("Dataset*"))
    rows, splits = check_nnunet_layout(folder, 252)
    counts = {c: sum(r["class"] == c for r in rows.values()) for c in ("benign", "malignant", "normal")}
    assert counts == {"benign": 154, "malignant": 98, "normal": 0}
    assert "4 normal cases left out" in summary
    kept = run_convert("breast", shared_data / "BrEaST", tmp_path / "raw2", "--keep-normal")
    rows_kept, _ = check_nnunet_layout(kept, 256)
    normals = [c for c, r in rows_kept.items() if r["class"] == "normal"]
    assert len(normals) == 4 and all(label(kept, c).max() == 0 for c in normals)
    with_other = [c for c, r in rows.items() if r["other_masks_ignored"]]
    assert with_other
    src = shared_data / "BrEaST" / "BrEaST-Lesions_USG-images_and_masks"
    outside = 0
    for cid in with_other:
        row = rows[cid]
        assert "_other" not in row["source_masks"]
        tumor = read_mask(shared_data / "BrEaST" / row["source_masks"]).mask
        np.testing.assert_array_equal(label(folder, cid), tumor.astype(np.uint8))
        for name in row["other_masks_ignored"].split(";"):
            outside += int((read_mask(src / name).mask & ~tumor).sum())
    assert outside > 0  # the _other regions really differ from the lesion, and were left out
    assert {r["birads"] for r in rows.values()} >= {"2", "3", "4a", "5"}


def test_stu_real_resizes_masks(shared_data, tmp_path):
    folder = run_convert("stu", shared_data / "STU", tmp_path / "raw")
    rows, _ = check_nnunet_layout(folder, 42)
    resized = [r for r in rows.values() if r["mask_resized_from"]]
    assert len(resized) == 36
    for cid in rows:
        assert label(folder, cid).shape == (128, 128)
        assert label(folder, cid).max() == 1


def test_busbra_real_official_folds(shared_data, tmp_path):
    source = shared_data / "BUS-BRA-sample"
    folder = run_convert("busbra", source, tmp_path / "raw")
    rows, splits = check_nnunet_layout(folder, 60)
    with open(source / "BUSBRA" / "5-fold-cv.csv", newline="") as f:
        k_fold = {f"busbra_{r['ID'][4:]}": int(r["kFold"]) for r in csv.DictReader(f)}
    for k, fold in enumerate(splits):
        assert sorted(fold["val"]) == sorted(c for c, f in k_fold.items() if f == k + 1)
    fold_of_patient = {}
    for k, fold in enumerate(splits):
        for c in fold["val"]:
            assert fold_of_patient.setdefault(rows[c]["patient_id"], k) == k  # patients never split


def test_ddti_real(shared_data, tmp_path):
    source = shared_data / "DDTI-sample"
    folder = run_convert("ddti", source, tmp_path / "raw")
    rows, _ = check_nnunet_layout(folder, 40)
    for cid, row in list(rows.items())[:10]:
        src = np.asarray(Image.open(source / row["source_masks"]))
        np.testing.assert_array_equal(label(folder, cid), (src > 127).astype(np.uint8))
    assert all(r["class"] == "" for r in rows.values())  # category.csv is forged: not used


# ---------------------------------------------------------------------------------------------
# replicas of every layout
# ---------------------------------------------------------------------------------------------
def test_busi_replica_merges_with_or(tmp_path):
    source, facts = replicas.write_busi(tmp_path / "src")
    folder = run_convert("busi", source, tmp_path / "raw", "--folds", 3)
    rows, _ = check_nnunet_layout(folder, facts["n_lesion"])
    for cid in facts["merged"]:
        np.testing.assert_array_equal(label(folder, cid), facts["labels"][cid].astype(np.uint8))
    np.testing.assert_array_equal(label(folder, "busi_malignant_0002"), facts["labels"]["busi_malignant_0002"])
    assert rows["busi_benign_0195"]["source_masks"].count(";") == 2
    assert "3 normal cases left out" in capture_summary("busi", source, tmp_path / "raw_s", "--folds", 3)


def capture_summary(*args):
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run_convert(args[0], args[1], args[2], *args[3:])
    return buf.getvalue()


def test_breast_replica_tumor_only(tmp_path):
    source, facts = replicas.write_breast(tmp_path / "src")
    folder = run_convert("breast", source, tmp_path / "raw", "--folds", 3, "--keep-normal")
    rows, _ = check_nnunet_layout(folder, facts["n"])
    for cid, truth in facts["labels"].items():
        np.testing.assert_array_equal(label(folder, cid), truth.astype(np.uint8))
    assert rows["breast_case002"]["other_masks_ignored"] == "case002_other1.png;case002_other2.png"
    assert rows["breast_case045"]["class"] == "normal" and rows["breast_case001"]["birads"] == "3"
    # the default (same rule as BUSI): the normal case is left out
    lesions = run_convert("breast", source, tmp_path / "raw_default", "--folds", 3)
    rows, _ = check_nnunet_layout(lesions, facts["n"] - len(facts["normal"]))
    assert not set(facts["normal"]) & set(rows)


def test_udiat_replica_noncontiguous_ids(tmp_path):
    source, facts = replicas.write_udiat(tmp_path / "src")
    folder = run_convert("udiat", source, tmp_path / "raw", "--folds", 3)
    rows, _ = check_nnunet_layout(folder, facts["n"])
    assert sorted(rows) == facts["ids"]
    assert rows["udiat_000295"]["class"] in ("benign", "malignant") and rows["udiat_000001"]["class"] == "malignant"


def test_stu_replica_resize(tmp_path):
    source, facts = replicas.write_stu(tmp_path / "src")
    out = capture_summary("stu", source, tmp_path / "raw", "--folds", 3)
    folder = tmp_path / "raw" / "Dataset504_STU"
    rows, _ = check_nnunet_layout(folder, facts["n"])
    assert f"resized masks (nearest neighbour to the image size): {facts['resized']}" in out
    truth = replicas.disc((128, 128), (64, 60), 30)
    for cid in rows:  # the resized disc matches the 128x128 one up to a boundary ring
        assert np.mean(label(folder, cid) != truth) < 0.02


def test_busis_replica_bmp_gt_and_classes(tmp_path):
    source, facts = replicas.write_busis(tmp_path / "src")
    folder = run_convert("busis", source, tmp_path / "raw", "--folds", 3)
    rows, _ = check_nnunet_layout(folder, facts["n"])
    assert rows["busis_0002"]["source_masks"].endswith("_GT.bmp")
    assert sum(r["class"] == "malignant" for r in rows.values()) == facts["malignant"]


def test_busbra_replica_folds(tmp_path):
    source, facts = replicas.write_busbra(tmp_path / "src")
    folder = run_convert("busbra", source, tmp_path / "raw")
    _, splits = check_nnunet_layout(folder, facts["n"])
    for k, fold in enumerate(splits):
        assert sorted(fold["val"]) == sorted(c for c, f in facts["fold_of"].items() if f == k)


def test_tn3k_replica_test_set_folds_and_jpeg_threshold(tmp_path):
    source, facts = replicas.write_tn3k(tmp_path / "src")
    folder = run_convert("tn3k", source, tmp_path / "raw")
    rows, splits = check_nnunet_layout(folder, facts["n_trainval"], facts["n_test"])
    assert (folder / "labelsTs" / "tn3k_test_0000.png").is_file() and "tn3k_trainval_0000" in rows
    for k, fold in enumerate(splits):
        assert fold["val"] == [f"tn3k_trainval_{i:04d}" for i in range(facts["n_trainval"]) if i % 5 == k]
    for cid, truth in facts["labels"].items():  # JPEG noise removed by the >= 128 threshold
        got = label(folder, cid, "Ts" if "test" in cid else "Tr")
        assert set(np.unique(got)) == {0, 1} and np.mean(got != truth) < 0.01
    assert rows["tn3k_trainval_0001"]["class"] == "malignant"


def test_tg3k_replica_video_grouping(tmp_path):
    source, facts = replicas.write_tg3k(tmp_path / "src")
    folder = run_convert("tg3k", source, tmp_path / "raw", "--folds", 3)
    rows, splits = check_nnunet_layout_gland(folder, facts["n"])
    assert len({r["patient_id"] for r in rows.values()}) == facts["videos"]
    for fold in splits:  # each recovered video entirely in one validation fold
        videos_val = {rows[c]["patient_id"] for c in fold["val"]}
        videos_train = {rows[c]["patient_id"] for c in fold["train"]}
        assert not videos_val & videos_train
    out = capture_summary("tg3k", source, tmp_path / "raw_off", "--official-split")
    assert "1 video(s) in both train and val" in out


def check_nnunet_layout_gland(folder, n):
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "gland": 1}
    return check_nnunet_layout(folder, n)


def test_ddti_processed_replica(tmp_path):
    source, facts = replicas.write_ddti_processed(tmp_path / "src")
    folder = run_convert("ddti", source, tmp_path / "raw", "--folds", 3)
    rows, _ = check_nnunet_layout(folder, facts["n"])
    assert "ddti_10004" in rows and "2_preprocessed" not in "".join(r["source_image"] for r in rows.values())


def test_ddti_original_xml_polygons(tmp_path):
    source, facts = replicas.write_ddti_original(tmp_path / "src")
    folder = run_convert("ddti", source, tmp_path / "raw", "--folds", 3)
    rows, _ = check_nnunet_layout(folder, facts["n"])
    for cid, truth in facts["labels"].items():  # both regions of image 1_1 filled; truncated 197.xml salvaged
        np.testing.assert_array_equal(label(folder, cid), truth.astype(np.uint8))
    assert rows["ddti_0001_1"]["n_polygons"] == "2" and rows["ddti_0197_1"]["tirads"] == "4a"


def test_generic_folder_converter(tmp_path):
    source, facts = replicas.write_folder(tmp_path / "src")
    folder = run_convert("folder", source, tmp_path / "raw", "--folds", 3, "--name", "MyData", "--id", 777,
                         "--mask-pattern", "{stem}_mask*.png", "--classes-csv", source / "classes.csv")
    rows, _ = check_nnunet_layout(folder, facts["n"])
    assert folder.name == "Dataset777_MyData" and "mydata_img_0" in rows
    assert int(rows["mydata_img_0"]["n_masks"]) == 2 and rows["mydata_img_1"]["class"] == "malignant"


def test_folder_converter_keeps_a_patients_images_together(tmp_path):
    """The ``patient_id`` column of --classes-csv: 24 images of 8 patients (3 each); no patient
    spans two folds, or the hold-out and training (check_nnunet_layout asserts both)."""
    source, _ = replicas.write_folder(tmp_path / "src", n=24, images_per_patient=3)
    folder = run_convert("folder", source, tmp_path / "raw", "--folds", 3, "--test-fraction", 0.25,
                         "--mask-pattern", "{stem}_mask*.png", "--classes-csv", source / "classes.csv")
    rows = manifest(folder)
    n_test = sum(r["split"] == "test" for r in rows.values())
    assert n_test % 3 == 0 and n_test > 0  # whole patients held out
    _, splits = check_nnunet_layout(folder, 24 - n_test, n_test)
    assert len({r["patient_id"] for r in rows.values()}) == 8
    assert all(len(f["val"]) % 3 == 0 for f in splits)


def test_rgb_option_and_test_fraction(tmp_path):
    source, facts = replicas.write_udiat(tmp_path / "src")
    folder = run_convert("udiat", source, tmp_path / "raw", "--rgb", "--test-fraction", 0.3, "--folds", 2)
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert Image.open(next((folder / "imagesTr").iterdir())).mode == "RGB"
    n_test = len(list((folder / "imagesTs").iterdir()))
    assert 1 <= n_test <= 3 and ds["numTraining"] == facts["n"] - n_test


# ---------------------------------------------------------------------------------------------
# splits: reproducible, grouped duplicates
# ---------------------------------------------------------------------------------------------
def test_splits_reproducible_and_dedup_keeps_duplicates_together(tmp_path):
    source, _ = replicas.write_busi(tmp_path / "src", n_benign=12, n_malignant=8)
    cls_dir = source / "Dataset_BUSI_with_GT" / "benign"
    # an exact copy and a slightly noisy copy of benign (1) under new numbers
    for n, noise in ((50, 0), (51, 3)):
        img = np.asarray(Image.open(cls_dir / "benign (1).png")).astype(int)
        img = np.clip(img + np.random.default_rng(n).integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(cls_dir / f"benign ({n}).png")
        Image.open(cls_dir / "benign (1)_mask.png").save(cls_dir / f"benign ({n})_mask.png")
    a = run_convert("busi", source, tmp_path / "a", "--dedup", "--seed", 3)
    b = run_convert("busi", source, tmp_path / "b", "--dedup", "--seed", 3)
    assert (a / "splits_final.json").read_text() == (b / "splits_final.json").read_text()
    with open(a / "duplicates.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    kinds = {(p["case_a"], p["case_b"]): p["kind"] for p in pairs}
    assert kinds[("busi_benign_0001", "busi_benign_0050")] == "exact"
    assert any(set(k) == {"busi_benign_0001", "busi_benign_0051"} or set(k) == {"busi_benign_0050", "busi_benign_0051"}
               for k, kind in kinds.items() if kind == "near")
    splits = json.loads((a / "splits_final.json").read_text())
    fold = {c: k for k, f in enumerate(splits) for c in f["val"]}
    assert fold["busi_benign_0001"] == fold["busi_benign_0050"] == fold["busi_benign_0051"]


# ---------------------------------------------------------------------------------------------
# safe output and errors
# ---------------------------------------------------------------------------------------------
def test_refuses_existing_output_and_overwrites_on_request(tmp_path, capsys):
    source, _ = replicas.write_stu(tmp_path / "src")
    folder = run_convert("stu", source, tmp_path / "raw", "--folds", 3)
    (folder / "marker").write_text("user data")
    code = main(["convert", "stu", str(source), "-o", str(tmp_path / "raw"), "--no-progress", "--folds", "3"])
    assert code == 1 and "--overwrite" in capsys.readouterr().err
    assert (folder / "marker").is_file()
    run_convert("stu", source, tmp_path / "raw", "--folds", 3, "--overwrite")
    assert not (folder / "marker").exists() and len(list((folder / "imagesTr").iterdir())) == 6


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    from bus_nnunet.dataset_conversion import pipeline
    source, _ = replicas.write_stu(tmp_path / "src")
    raw = tmp_path / "raw"
    options = Options(dataset_id=504, name="STU", raw_root=raw, folds=3, progress=False)
    written = []

    def write_case_then_fail(*args, **kwargs):  # the third case is written, then the writing fails
        written.append(real_write_case(*args, **kwargs))
        if len(written) >= 3:
            raise RuntimeError("simulated failure while writing")
        return written[-1]

    real_write_case = pipeline.write_case
    monkeypatch.setattr(pipeline, "write_case", write_case_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        convert(get_converter("stu"), source, options)
    assert len(written) == 3
    assert not raw.exists() or list(raw.iterdir()) == []


def test_convert_arguments_and_defaults_come_from_options_once(tmp_path, monkeypatch):
    """Issue 27 §2: ``bus-nnunet convert``'s arguments are derived from ``Options`` (help, defaults),
    and the dataset's id / name and $nnUNet_raw fill what is left unset, in one place."""
    import argparse
    import dataclasses
    from bus_nnunet.commands import convert as command
    parser = argparse.ArgumentParser(prog="bus-nnunet")
    command.register(parser.add_subparsers())
    args = parser.parse_args(["convert", "stu", str(tmp_path)])
    options = Options.from_arguments(args)
    assert options == Options()  # every default is the dataclass's own
    fields = {f.name for f in dataclasses.fields(Options) if "help" in f.metadata}
    assert fields == {f.name for f in dataclasses.fields(Options)} - {"dataset_options"}
    args = parser.parse_args(["convert", "stu", str(tmp_path), "--id", "42", "--no-progress", "--folds", "3",
                              "--test-fraction", "0.2", "--resize-masks", "--overwrite"])
    assert Options.from_arguments(args) == Options(dataset_id=42, progress=False, folds=3, test_fraction=0.2,
                                                   resize_masks=True, overwrite=True)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    filled = Options().with_defaults(get_converter("stu"))
    assert (filled.dataset_id, filled.name, filled.raw_root) == (504, "STU", tmp_path / "raw")
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(UserError, match="no output root: set nnUNet_raw or pass -o/--raw-root"):
        convert(get_converter("stu"), tmp_path, Options())


def expect_user_error(*argv, match):
    with pytest.raises(UserError, match=match):
        args = __import__("bus_nnunet.cli", fromlist=["build_parser"]).build_parser().parse_args(
            ["convert", *map(str, argv), "--no-progress", "--folds", "3"])
        args.func(args)


def test_clear_errors(tmp_path):
    raw = tmp_path / "raw"
    expect_user_error("busi", tmp_path / "nowhere", "-o", raw, match="not found")
    source, _ = replicas.write_busi(tmp_path / "src")
    cls_dir = source / "Dataset_BUSI_with_GT" / "benign"
    (cls_dir / "benign (2).png").rename(tmp_path / "moved.png")
    expect_user_error("busi", source, "-o", raw, match=re.escape("benign (2)_mask.png"))  # mask without image
    (tmp_path / "moved.png").rename(cls_dir / "benign (2).png")
    (cls_dir / "benign (3)_mask.png").unlink()
    expect_user_error("busi", source, "-o", raw, match=re.escape("benign (3).png"))  # image without mask
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(cls_dir / "benign (3)_mask.png")
    (cls_dir / "benign (10).png").write_bytes(b"not a png")
    expect_user_error("busi", source, "-o", raw, match=re.escape("cannot read image file") + ".*benign \\(10\\)")
    Image.fromarray(np.zeros((48, 64), np.uint8)).convert("RGB").save(cls_dir / "benign (10).png")
    Image.fromarray((replicas.disc((48, 64), (20, 20), 6) * 2).astype(np.uint8)).save(cls_dir / "benign (11)_mask.png")
    expect_user_error("busi", source, "-o", raw, match=r"benign \(11\)_mask.png has values \[0, 2\]")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(cls_dir / "benign (11)_mask.png")
    expect_user_error("busi", source, "-o", raw, match="--resize-masks")
    (cls_dir / "notes.txt").write_text("x")
    expect_user_error("busi", source, "-o", raw, match="notes.txt")
    assert not raw.exists() or not any(raw.iterdir())


# ---------------------------------------------------------------------------------------------
# nnU-Net accepts the output
# ---------------------------------------------------------------------------------------------
def test_nnunet_plan_and_preprocess_accepts_converted_dataset(tmp_path):
    env = _nnunet.make_env(tmp_path / "nnunet")
    source, facts = replicas.write_busi(tmp_path / "src", n_benign=6, n_malignant=4, n_normal=2)
    _nnunet.run(["bus-nnunet", "convert", "busi", source, "--id", 901, "--no-progress", "--keep-normal",
                 "--folds", 3], env)
    proc = _nnunet.run(["nnUNetv2_plan_and_preprocess", "-d", 901, "-c", "2d", "--verify_dataset_integrity",
                        "-np", 2, "-npfp", 2, "--no_pbar"], env)
    pre = Path(env["nnUNet_preprocessed"]) / "Dataset901_BUSI"
    assert (pre / "nnUNetPlans.json").is_file(), proc.stdout[-2000:]
    cases = {p.name.split(".")[0] for p in (pre / "nnUNetPlans_2d").iterdir() if "_seg" not in p.name}
    assert len(cases) == facts["n_lesion"] + facts["n_normal"]


@pytest.mark.parametrize("remove, missing", [("benign (195)_mask.png", "_mask.png"),
                                             ("benign (195)_mask_1.png", "_mask_1.png")])
def test_busi_gap_in_a_numbered_mask_set_is_an_error(tmp_path, remove, missing):
    """A missing primary mask (or _mask_2 without _mask_1) must not shrink the lesion silently."""
    source, _ = replicas.write_busi(tmp_path / "src")
    (source / "Dataset_BUSI_with_GT" / "benign" / remove).unlink()
    raw = tmp_path / "raw"
    expect_user_error("busi", source, "-o", raw,
                      match=re.escape("benign (195).png (missing " + missing) + ".*restore the missing mask files")
    assert not raw.exists() or not any(raw.iterdir())


def test_busis_converter_on_a_breast_folder_says_it_is_not_busis(tmp_path):
    source, _ = replicas.write_breast(tmp_path / "src")
    expect_user_error("busis", source, "-o", tmp_path / "raw", match="does not look like BUSIS.*convert breast")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_users_umask_not_mkdtemps_0700(tmp_path, umask):
    """Shared lab storage: a converted dataset and every atomically written file must be readable
    by whoever the user's umask lets read them (mkdtemp alone gives drwx------)."""
    from bus_nnunet.io_utils import atomic_output_dir, atomic_write_text
    source, _ = replicas.write_stu(tmp_path / "src")
    old = os.umask(umask)
    try:
        folder = run_convert("stu", source, tmp_path / "raw", "--folds", 3)
        with atomic_output_dir(tmp_path / "out") as tmp:
            atomic_write_text(tmp / "a.txt", "x")
    finally:
        os.umask(old)
    for d in (folder, folder / "imagesTr", tmp_path / "out"):
        assert d.stat().st_mode & 0o777 == 0o777 & ~umask, d
    for f in (folder / "dataset.json", tmp_path / "out" / "a.txt"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f


KILLED_CONVERT = """
import sys, time
import bus_nnunet.dataset_conversion.pipeline as pipeline
from bus_nnunet.cli import main
real = pipeline.sha256_of
def slow(path):  # writing slowed down inside the subprocess: it is killed half way
    if path.name == "Test_Image_3.png":
        print("converting", flush=True)
        time.sleep(60)
    return real(path)
pipeline.sha256_of = slow
sys.exit(main(["convert", "stu", sys.argv[1], "-o", sys.argv[2], "--no-progress", "--folds", "3"]))
"""


def test_convert_after_a_sigkill_removes_its_stale_partial_and_says_so(tmp_path, capsys):
    from _processes import sigkill_when_printed
    source, _ = replicas.write_stu(tmp_path / "src")
    raw = tmp_path / "raw"
    sigkill_when_printed(KILLED_CONVERT, source, raw, line="converting")
    stale = list(raw.glob(".Dataset*.partial-*"))
    assert len(stale) == 1 and not list(raw.glob("Dataset*"))
    # a partial of another dataset whose writer still runs (this process) is left alone
    running = raw / f".Dataset777_Other.partial-{os.getpid()}-abc"
    running.mkdir()
    folder = run_convert("stu", source, raw, "--folds", 3)
    out = capsys.readouterr().out
    assert f"removed {stale[0]}" in out and "interrupted run" in out
    assert not stale[0].exists() and running.is_dir() and (folder / "dataset.json").is_file()


def test_busbra_without_its_fold_file_and_with_a_hold_out_keeps_patients_together(tmp_path):
    """The fallback split (no 5-fold-cv.csv) and --test-fraction group by patient: no patient's
    left and right views end up in two folds, or in the hold-out and training."""
    source, facts = replicas.write_busbra(tmp_path / "src")
    for fold_file in source.rglob("*-fold-cv.csv"):
        fold_file.unlink()
    folder = run_convert("busbra", source, tmp_path / "raw", "--folds", 3, "--test-fraction", 0.3)
    rows = manifest(folder)
    n_test = sum(r["split"] == "test" for r in rows.values())
    assert 0 < n_test < len(rows)
    two_view = [p for p in {r["patient_id"] for r in rows.values()}
                if sum(r["patient_id"] == p for r in rows.values()) == 2]
    assert two_view  # the replica has patients with two images, so the grouping is exercised
    check_nnunet_layout(folder, len(rows) - n_test, n_test)  # asserts the patient grouping


@pytest.mark.parametrize("err, fix", [(28, "the disk is full"), (30, "the file system is read-only")])
def test_environment_errors_are_messages_and_leave_nothing(tmp_path, capsys, monkeypatch, err, fix):
    """A full disk or a read-only file system half way through a conversion: one line naming the
    path and the fix, exit 1, no partial folder.  A full disk names the dataset folder (the partial
    file it hit is gone) and the free space."""
    import errno
    assert (err, fix) in ((errno.ENOSPC, "the disk is full"), (errno.EROFS, "the file system is read-only"))
    source, _ = replicas.write_stu(tmp_path / "src")
    real_save, calls = Image.Image.save, []

    def failing_save(self, fp, *a, **k):
        calls.append(fp)
        if len(calls) == 3:
            raise OSError(err, os.strerror(err), str(fp))
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    raw = tmp_path / "raw"
    assert main(["convert", "stu", str(source), "-o", str(raw), "--no-progress", "--folds", "3"]) == 1
    err_text = capsys.readouterr().err
    named = f"cannot write {raw / 'Dataset504_STU'}: " if err == errno.ENOSPC else f"cannot write {calls[2]}"
    assert named in err_text and fix in err_text and "Traceback" not in err_text
    assert err != errno.ENOSPC or " free of " in err_text
    assert not raw.exists() or list(raw.iterdir()) == []


def test_output_root_that_is_a_file_and_scarce_hold_out_classes_are_messages(tmp_path, capsys):
    source, _ = replicas.write_stu(tmp_path / "src")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["convert", "stu", str(source), "-o", str(blocker), "--no-progress"]) == 1
    assert f"cannot write {blocker}" in capsys.readouterr().err and blocker.read_text() == "x"
    busi, _ = replicas.write_busi(tmp_path / "busi", n_benign=6, n_malignant=1, n_normal=1)
    expect_user_error("busi", busi, "-o", tmp_path / "raw", "--test-fraction", 0.3,
                      match="at least 2 cases per class; class malignant has 1")
    expect_user_error("busi", busi, "-o", tmp_path / "raw", "--test-fraction", 0.9, match="at most 0.5")
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


NEW_CONVERTER = '''
from dataclasses import dataclass, field
from bus_nnunet.dataset_conversion.base import Case, Collection, DatasetInfo


@dataclass
class ToyOptions:
    image_suffix: str = field(default=".png", metadata={"help": "ending of the toy images"})


def collect(source, options):
    suffix = options.dataset_options.image_suffix
    images = sorted(p for p in source.glob("*" + suffix) if not p.name.startswith("mask_"))
    return Collection(cases=[Case(case_id=f"toy_{i}", image=p, masks=[source / ("mask_" + p.name)])
                             for i, p in enumerate(images)], split_policy="toy folds")


INFO = DatasetInfo(key="toyus", default_id=777, default_name="ToyUS", collect=collect, aliases=("toy-us",),
                   options=ToyOptions, description="A converter that no other file names.")
'''


def test_a_new_converter_module_is_all_it_takes(tmp_path, monkeypatch, capsys):
    """A converter module dropped into the package (here: a folder added to its search path) is a
    ``bus-nnunet convert`` dataset with its alias, default id and own option, editing no other file."""
    import bus_nnunet.dataset_conversion as package
    extra = tmp_path / "more_converters"
    extra.mkdir()
    (extra / "toyus.py").write_text(NEW_CONVERTER)
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(extra)])
    monkeypatch.delitem(sys.modules, "bus_nnunet.dataset_conversion.toyus", raising=False)
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    help_text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "toyus" in help_text and "toy-us = toyus" in help_text and "toyus 777" in help_text
    assert "--image-suffix" in help_text and "A converter that no other file names." in help_text
    source = tmp_path / "toy"
    source.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(source / f"img{i}.bmp")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255
        Image.fromarray(mask).save(source / f"mask_img{i}.bmp")
    folder = run_convert("toy-us", source, tmp_path / "raw", "--folds", 2, "--image-suffix", ".bmp")
    assert folder.name == "Dataset777_ToyUS"
    check_nnunet_layout(folder, 4)
