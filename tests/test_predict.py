"""``bus-nnunet predict`` (and the same input reading in ``classify`` / ``gradcam``): the images
users have, in any file type and mode, converted to the model's channels exactly as the
converters converted the training images, and one unreadable file costing only itself."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _nnunet
from bus_nnunet.errors import UserError
from bus_nnunet.inference import images as U


def _ultrasound_like(seed=0, shape=(48, 56)):
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, shape).astype(np.uint8)
    grey[0, 0], grey[0, 1] = 0, 255  # full range, so the 16-bit rescale is exact
    return grey


def _write_every_mode(folder: Path, grey: np.ndarray, distinct: bool = False) -> dict:
    """The same picture as each file type and mode users send (each its own, shifted, picture
    with ``distinct``: a converter would group copies as duplicates); returns name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    modes = {}
    for k, name in enumerate(("grey", "rgb_equal", "rgba", "palette", "sixteen", "bmp", "tiff", "jpeg")):
        modes[name] = _encode(name, np.roll(grey, 3 * k, axis=1) if distinct else grey)
    for file_name, img in modes.values():
        img.save(folder / file_name, **({"quality": 95} if file_name.endswith(".jpg") else {}))
    return {name: folder / file_name for name, (file_name, _) in modes.items()}


def _encode(name: str, grey: np.ndarray):
    rgb = np.repeat(grey[..., None], 3, -1)
    return {
        "grey": ("grey.png", Image.fromarray(grey)),
        "rgb_equal": ("rgb_equal.png", Image.fromarray(rgb)),  # as BUSI ships its images
        "rgba": ("rgba.png", Image.fromarray(np.dstack([rgb, np.full(grey.shape, 255, np.uint8)]))),
        "palette": ("palette.png", Image.fromarray(grey).convert("P")),
        "sixteen": ("sixteen.png", Image.fromarray(grey.astype(np.uint16) * 257)),
        "bmp": ("bmp.bmp", Image.fromarray(grey)),
        "tiff": ("tiff.tif", Image.fromarray(rgb)),
        "jpeg": ("jpeg.jpg", Image.fromarray(grey)),
    }[name]


@pytest.mark.parametrize("rgb", [False, True])
def test_inputs_become_what_the_converter_gave_nnunet(tmp_path, rgb):
    """Every mode is read into the array nnU-Net's NaturalImage2DIO reads from the converter's own
    output for that file (``bus-nnunet convert folder``, with and without ``--rgb``)."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from bus_nnunet.cli import main
    source = tmp_path / "src"
    grey = _ultrasound_like()
    files = _write_every_mode(source / "images", grey, distinct=True)
    (source / "masks").mkdir()
    for f in files.values():
        Image.fromarray((grey > 128).astype(np.uint8) * 255).save(source / "masks" / f"{f.stem}.png")
    args = ["convert", "folder", str(source), "-o", str(tmp_path / "raw"), "--id", 901, "--name", "Modes",
            "--folds", 2, "--no-progress", *(["--rgb"] if rgb else [])]
    assert main([str(a) for a in args]) == 0
    raw = tmp_path / "raw" / "Dataset901_Modes"
    manifest = {Path(r["source_image"]).name: r["case_id"] for r in csv.DictReader(open(raw / "manifest.csv"))}
    for name, f in files.items():
        converted, _ = NaturalImage2DIO().read_images([str(raw / "imagesTr" / f"{manifest[f.name]}_0000.png")])
        ours = U.read_for_model(f, rgb)
        assert ours.shape == converted.shape == ((3 if rgb else 1), 1, *grey.shape), name
        np.testing.assert_array_equal(ours, converted, err_msg=name)
    # lossless files of an equal-channel picture are the same picture in either model
    same = _write_every_mode(tmp_path / "same", grey)
    for name in ("rgb_equal", "rgba", "palette", "sixteen", "bmp", "tiff"):
        np.testing.assert_array_equal(U.read_for_model(same[name], rgb), U.read_for_model(same["grey"], rgb))


def test_collect_names_and_what_is_not_an_image(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for rel in ("a.png", "a.jpg", "case_0000.png", "sub/b.tif"):
        Image.fromarray(_ultrasound_like()).save(tmp_path / "in" / rel)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    images, ignored = U.collect_images([tmp_path / "in"])
    assert sorted(i.name for i in images) == ["a.jpg", "a.png", "case"]  # clash keeps suffixes; _0000 dropped
    assert [i.path.name for i in ignored] == ["notes.txt"]
    images, _ = U.collect_images([tmp_path / "in"], recursive=True)
    assert "sub/b" in {i.name for i in images}
    with pytest.raises(UserError, match="does not exist"):
        U.collect_images([tmp_path / "nope"])


def test_model_channels_from_dataset_json():
    assert U.model_wants_rgb({"channel_names": {"0": "US"}}, "m") is False
    assert U.model_wants_rgb({"channel_names": {"0": "R", "1": "G", "2": "B"}}, "m") is True
    with pytest.raises(UserError, match="2 input channels.*nnUNetv2_predict"):
        U.model_wants_rgb({"channel_names": {"0": "T1", "1": "T2"}}, "m")


def test_predict_folder_of_mixed_files_with_the_fold_ensemble(trained_us, tmp_path):
    """One test image of the planned dataset in eight file types and modes, a truncated PNG and a
    text file: every readable image is segmented; the lossless ones exactly as nnUNetv2_predict
    segments the converted image with the same two folds and mirroring."""
    ds, env = trained_us
    folder = _nnunet.model_folder(env, "nnUNetTrainerUS")
    source = sorted((ds.raw / "imagesTs").glob("*_0000.png"))[0]
    grey = np.asarray(Image.open(source))
    files = _write_every_mode(tmp_path / "in", grey)
    good = (tmp_path / "in" / "grey.png").read_bytes()
    (tmp_path / "in" / "broken.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    proc = _nnunet.run(["bus-nnunet", "predict", "-i", tmp_path / "in", "-m", folder, "-o", out, "-f", "0", "1",
                        "--no-progress"], env, check=False)
    assert proc.returncode == 1, proc.stderr  # one image could not be read: said in the exit status
    assert "1 image(s) skipped, not predicted: broken.png" in proc.stdout
    assert "1 file(s) ignored (not images): notes.txt" in proc.stdout

    reference = tmp_path / "reference"
    _nnunet.predict_cli(ds, env, "nnUNetTrainerUS", reference, folds=(0, 1))
    expected = np.asarray(Image.open(reference / f"{source.name[:-len('_0000.png')]}.png"))
    for name, f in files.items():
        mask = np.asarray(Image.open(out / "masks" / f"{f.stem}.png"))
        view = np.asarray(Image.open(out / "masks_255" / f"{f.stem}.png"))
        assert mask.shape == grey.shape and set(np.unique(mask)) <= {0, 1}, name
        np.testing.assert_array_equal(view, mask * 255)
        if name not in ("jpeg", "sixteen"):  # lossy; 16-bit is rescaled min..max, as the converters do
            np.testing.assert_array_equal(mask, expected, err_msg=name)
    assert expected.any() and not expected.all()  # the comparison is not between two blank masks
    rows = {Path(r["input"]).name: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["broken.png"]["status"] == "skipped" and "cannot read image file" in rows["broken.png"]["reason"]
    assert rows["notes.txt"]["status"] == "ignored"
    assert sum(r["status"] == "predicted" for r in rows.values()) == len(files)
    assert int(rows["grey.png"]["foreground_pixels"]) == int(expected.sum())

    refused = _nnunet.run(["bus-nnunet", "predict", "-i", files["grey"], "-m", folder, "-o", out], env, check=False)
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    # a converted imagesTs folder: masks named as nnU-Net names its labels, exit 0
    proc = _nnunet.run(["bus-nnunet", "predict", "-i", ds.raw / "imagesTs", "-m", folder, "-o", tmp_path / "ts",
                        "-f", "0", "1", "--disable-tta", "--no-progress"], env)
    assert sorted(p.name for p in (tmp_path / "ts" / "masks").iterdir()) == sorted(p.name for p in reference.glob("*.png"))
    assert "mirroring off" in proc.stdout
    # ... which evaluate scores against labelsTs as it is
    scored = tmp_path / "eval"
    _nnunet.run(["bus-nnunet", "evaluate", "--pred", tmp_path / "ts" / "masks", "--gt", ds.raw / "labelsTs",
                 "-o", scored, "--no-progress"], env)
    assert json.loads((scored / "metrics.json").read_text())["all"]["n_cases"] == 2


def test_predict_errors_name_the_fix(trained_us, tmp_path):
    ds, env = trained_us
    folder = _nnunet.model_folder(env, "nnUNetTrainerUS")
    image = sorted((ds.raw / "imagesTs").glob("*_0000.png"))[0]
    missing_fold = _nnunet.run(["bus-nnunet", "predict", "-i", image, "-m", folder, "-o", tmp_path / "a", "-f", "3"],
                               env, check=False)
    assert missing_fold.returncode == 1 and "no checkpoint_final.pth in fold_3" in missing_fold.stderr
    assert "found in: fold_0, fold_1" in missing_fold.stderr
    (tmp_path / "not_a_model").mkdir()
    not_a_model = _nnunet.run(["bus-nnunet", "predict", "-i", image, "-m", tmp_path / "not_a_model", "-o", tmp_path / "b"],
                              env, check=False)
    assert not_a_model.returncode == 1 and "no plans.json" in not_a_model.stderr
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    empty = _nnunet.run(["bus-nnunet", "predict", "-i", tmp_path / "only_text", "-m", folder, "-o", tmp_path / "c"],
                        env, check=False)
    assert empty.returncode == 1 and "no image files" in empty.stderr and not (tmp_path / "c").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG broken")
    all_bad = _nnunet.run(["bus-nnunet", "predict", "-i", tmp_path / "bad", "-m", folder, "-o", tmp_path / "d"],
                          env, check=False)
    assert all_bad.returncode == 1 and "x.png" in all_bad.stderr and not (tmp_path / "d").exists()


def test_gradcam_reads_images_as_predict_does(trained_us, tmp_path):
    ds, env = trained_us
    folder = _nnunet.model_folder(env, "nnUNetTrainerUS")
    grey = np.asarray(Image.open(sorted((ds.raw / "imagesTs").glob("*_0000.png"))[0]))
    files = _write_every_mode(tmp_path / "in", grey)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "cam"
    proc = _nnunet.run(["bus-nnunet", "gradcam", folder, "-i", files["rgba"], files["bmp"], tmp_path / "in" /
                        "broken.png", "-o", out, "-f", "1"], env, check=False)
    assert proc.returncode == 1 and "broken.png" in proc.stdout
    np.testing.assert_array_equal(np.load(out / "rgba_cam.npy"), np.load(out / "bmp_cam.npy"))
    assert json.dumps(sorted(p.name for p in out.iterdir())).count("_cam.npy") == 2


# -- issue 22: large images, masks as they are done, EXIF orientation, outputs never over inputs -----
def _count_network_evaluations(monkeypatch):
    """Make ``prediction.load_predictor`` count every forward pass of the loaded networks."""
    from bus_nnunet.inference import segmentation as P
    calls, load = [0], P.load_predictor

    def counting_load(*args, **kwargs):
        predictor = load(*args, **kwargs)
        forward = predictor.network.forward

        def counted(x):
            calls[0] += x.shape[0]
            return forward(x)
        predictor.network.forward = counted
        return predictor
    monkeypatch.setattr(P, "load_predictor", counting_load)
    return calls


def test_large_image_is_announced_with_nnunets_tile_count_and_shows_tile_progress(trained_us, tmp_path,
                                                                                  monkeypatch, capsys):
    """The estimate is exactly the number of network evaluations nnU-Net makes (its crop of the
    black border, padding, steps, mirroring and folds), said before the image is predicted, and
    nnU-Net's own bar counts that image's windows; a small image is neither announced nor barred."""
    from bus_nnunet.inference import segmentation as P
    ds, env = trained_us
    folder = _nnunet.model_folder(env, "nnUNetTrainerUS")
    big = np.zeros((150, 200), np.uint8)
    big[10:140, 25:190] = _ultrasound_like(1, (130, 165)) | 1  # a black border, as scanners write
    (tmp_path / "in").mkdir()
    Image.fromarray(big).save(tmp_path / "in" / "big.png")
    Image.fromarray(_ultrasound_like(2, (64, 64)) | 1).save(tmp_path / "in" / "small.png")
    monkeypatch.setattr(P, "LARGE_IMAGE_TILES", 10)
    calls = _count_network_evaluations(monkeypatch)
    predictor = P.load_predictor(folder, (0,))
    big_estimate = P.estimate_tiles(predictor, U.read_for_model(tmp_path / "in" / "big.png", False))
    small_estimate = P.estimate_tiles(predictor, U.read_for_model(tmp_path / "in" / "small.png", False))
    assert small_estimate.tiles <= 10 < big_estimate.tiles
    calls[0] = 0
    P.predict_images([tmp_path / "in"], folder, tmp_path / "out", folds=["0"], device="cpu")
    assert calls[0] == big_estimate.tiles + small_estimate.tiles
    err = capsys.readouterr().err
    assert f"big.png (200x150 px) needs an estimated {big_estimate.tiles:,} sliding-window tiles" in err
    assert f"({big_estimate.windows} windows of 64x64 px" in err and "small.png" not in err
    assert f"| {big_estimate.windows}/{big_estimate.windows} [" in err  # nnU-Net's bar over the windows
    assert small_estimate.windows == 1 and "| 1/1 [" not in err  # no bar for a one-window image


def test_masks_are_written_as_done_interruptions_say_how_far_and_exif_is_noted(trained_us, tmp_path, capsys):
    """Each mask is in the partial folder as soon as its image is done; a run stopped after one
    image says so and writes nothing; a killed run's partial folder is reported with its count.
    A JPEG with EXIF orientation 6 is segmented as stored, and summary.csv says so."""
    from bus_nnunet.inference import segmentation as P
    ds, env = trained_us
    folder = _nnunet.model_folder(env, "nnUNetTrainerUS")
    (tmp_path / "in").mkdir()
    for k in range(3):
        Image.fromarray(_ultrasound_like(k)).save(tmp_path / "in" / f"case{k}.png")
    out = tmp_path / "out"
    seen = []

    def stop_after_first(row, partial):
        assert partial.parent == tmp_path and partial.name.startswith(".out.partial-")
        assert (partial / row["mask"]).is_file() and (partial / "masks_255" / "case0.png").is_file()
        seen.append(row["input"])
        raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError, match="stopped by the test"):
        P.predict_images([tmp_path / "in"], folder, out, folds=["0"], device="cpu", progress=False,
                         on_image=stop_after_first)
    assert len(seen) == 1 and not out.exists()
    assert "stopped after 1 of 3 image(s) (RuntimeError)" in capsys.readouterr().err

    killed = tmp_path / ".out.partial-999999999-abcdefgh"  # a pid above Linux's pid_max: not running
    (killed / "masks").mkdir(parents=True)
    for name in ("case0.png", "case1.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(killed / "masks" / name)
    exif = Image.Exif()
    exif[U.EXIF_ORIENTATION_TAG] = 6
    stored = _ultrasound_like(5, (40, 64))
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    P.predict_images([tmp_path / "in" / "case0.png", tmp_path / "rotated.jpg"], folder, out, folds=["0"],
                     device="cpu", progress=False)
    assert not killed.exists()
    assert "(process 999999999, no longer running); it held the masks of 2 image(s)" in capsys.readouterr().err
    assert np.asarray(Image.open(out / "masks" / "rotated.png")).shape == stored.shape  # not as viewers show it
    rows = {Path(r["input"]).name: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["rotated.jpg"]["note"].startswith("EXIF orientation 6 ignored: viewers show this image rotated "
                                                  "90 degrees clockwise, the mask follows the stored pixels")
    assert rows["case0.png"]["note"] == ""


def test_output_that_is_contains_or_lies_inside_an_input_is_refused(trained_us, tmp_path, capsys):
    """`predict -i scans/ -o scans/ --overwrite` once deleted every input image: an output that is,
    contains or lies inside an input image folder or the model is refused, naming both, and every
    input stays as it was; classify likewise."""
    from bus_nnunet.cli import main
    ds, env = trained_us
    folder = _nnunet.model_folder(env, "nnUNetTrainerUS")
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(_ultrasound_like()).save(scans / "a.png")
    before = {p: p.read_bytes() for p in [*scans.rglob("*"), *folder.rglob("*")] if p.is_file()}
    refusals = [("predict", scans, scans, "is", scans), ("predict", scans, scans / "pred", "lies inside", scans),
                ("predict", scans, tmp_path, "contains", scans),
                ("predict", scans, folder / "pred", "lies inside", folder),
                ("classify", scans / "a.png", scans / "a.png", "is", scans / "a.png"),
                ("classify", scans, scans / "classes.csv", "lies inside", scans),
                ("classify", scans, folder / "classes.csv", "lies inside", folder)]
    for command, given, output, relation, overlapped in refusals:
        assert main([command, "-i", str(given), "-m", str(folder), "-o", str(output), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert f"{output} {relation} the input {overlapped}: writing there could replace or delete" in err, err
    assert {p: p.read_bytes() for p in [*scans.rglob("*"), *folder.rglob("*")] if p.is_file()} == before
    assert sorted(p.name for p in scans.iterdir()) == ["a.png"]
