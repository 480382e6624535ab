"""Issue 22: no command writes where it reads, ``--overwrite`` replaces only what bus-nnunet wrote,
and a full disk ends in one line.

* ``-o`` that is, contains or lies inside one of a command's inputs is refused, even with
  ``--overwrite``, naming both paths, and the input keeps every byte;
* ``--overwrite`` refuses a folder without bus-nnunet's marker file (or a file where the output
  folder goes) and leaves it as it was, and replaces a folder bus-nnunet wrote;
* a full disk while writing ends in one line naming the output folder and the free space.

The refusals come before any model is loaded, so tiny generated files do; nothing is trained.
"""
import errno
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import dataset_replicas as replicas  # noqa: E402

from bus_nnunet.cli import main  # noqa: E402
from bus_nnunet.io_utils import OUTPUT_MARKER  # noqa: E402


def snapshot(root: Path) -> dict:
    """Every file under ``root`` (or ``root`` itself) with its bytes."""
    root = Path(root)
    if root.is_file():
        return {root: root.read_bytes()}
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def save_mask(path: Path, top: int = 2) -> Path:
    mask = np.zeros((12, 12), np.uint8)
    mask[top:top + 5, 3:8] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def save_probabilities(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, probabilities=np.full((2, 1, 12, 12), 0.5, np.float32))
    return path


# ---------------------------------------------------------------------------------------------
# each command: its inputs under work/ (one of them to protect) and its command line for -o OUT
# ---------------------------------------------------------------------------------------------
def evaluate_command(work: Path):
    for case in ("a", "b"):
        save_mask(work / "pred" / f"{case}.png", top=3)
        save_mask(work / "labels" / f"{case}.png")
    return work / "labels", lambda out: ["evaluate", "--pred", str(work / "pred"), "--gt", str(work / "labels"),
                                         "-o", str(out), "--no-progress"]


def evaluate_probabilities_command(work: Path):
    _, argv = evaluate_command(work)
    save_probabilities(work / "probabilities" / "a.npz")
    return work / "probabilities", lambda out: argv(out) + ["--probabilities", str(work / "probabilities")]


def uncertainty_command(work: Path):
    for member in ("fold_0", "fold_1"):
        save_probabilities(work / member / "a.npz")
    return work / "fold_1", lambda out: ["uncertainty", "-i", str(work / "fold_0"), str(work / "fold_1"),
                                         "-o", str(out)]


def gradcam_command(work: Path):
    (work / "model").mkdir(parents=True)
    (work / "model" / "plans.json").write_text("{}")
    save_mask(work / "scans" / "scan.png")
    return work / "scans", lambda out: ["gradcam", str(work / "model"), "-i", str(work / "scans"), "-o", str(out)]


def gradcam_model_command(work: Path):
    _, argv = gradcam_command(work)
    return work / "model", argv


@pytest.fixture
def cv_report_command(nnunet_env):
    """A hand-made results folder of one trainer, as cv-report reads it."""
    dataset = "Dataset992_Safety"
    results = Path(nnunet_env["nnUNet_results"]) / dataset
    save_mask(Path(nnunet_env["nnUNet_preprocessed"]) / dataset / "gt_segmentations" / "a.png")
    (Path(nnunet_env["nnUNet_raw"]) / dataset).mkdir(parents=True)
    save_mask(results / "A__nnUNetPlans__2d" / "fold_0" / "validation" / "a.png")
    return results, lambda out: ["cv-report", "992", "-tr", "A", "-f", "0", "-o", str(out), "--no-progress"]


COMMANDS = {"evaluate": evaluate_command, "evaluate --probabilities": evaluate_probabilities_command,
            "uncertainty": uncertainty_command, "gradcam": gradcam_command, "gradcam model": gradcam_model_command,
            "cv-report": None}


@pytest.fixture(params=sorted(COMMANDS))
def command(request, tmp_path):
    """(the input to protect, argv for an output) of one command."""
    if COMMANDS[request.param] is None:
        return request.getfixturevalue("cv_report_command")
    return COMMANDS[request.param](tmp_path / "work")


# ---------------------------------------------------------------------------------------------
# -o overlapping an input
# ---------------------------------------------------------------------------------------------
OUTPUT_FOR = {"is": lambda inp: inp, "contains": lambda inp: inp.parent, "lies inside": lambda inp: inp / "out"}


@pytest.mark.parametrize("relation", sorted(OUTPUT_FOR))
def test_an_output_overlapping_an_input_is_refused_and_the_input_kept(command, relation, capsys):
    protected, argv = command
    out = OUTPUT_FOR[relation](protected)
    before = snapshot(protected.parent)
    assert main(argv(out) + ["--overwrite"]) == 1
    err = capsys.readouterr().err
    # an output holding several inputs is refused naming the first of them
    named = f"{out} contains the input {out}/" if relation == "contains" else f"{out} {relation} the input {protected}"
    assert named in err and "Traceback" not in err
    assert snapshot(protected.parent) == before  # every file still there, byte for byte


def test_evaluate_output_holding_the_manifest_is_refused(tmp_path, capsys):
    _, argv = evaluate_command(tmp_path / "work")
    manifest = tmp_path / "study" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("case_id,class\na,benign\nb,malignant\n")
    (manifest.parent / OUTPUT_MARKER).write_text("even a folder bus-nnunet wrote")
    before = snapshot(manifest.parent)
    assert main(argv(manifest.parent) + ["--manifest", str(manifest), "--overwrite"]) == 1
    assert f"{manifest.parent} contains the input {manifest}" in capsys.readouterr().err
    assert snapshot(manifest.parent) == before


@pytest.mark.parametrize("relation", sorted(OUTPUT_FOR))
def test_convert_dataset_folder_overlapping_the_source_is_refused(tmp_path, relation, capsys):
    """convert's -o is the nnUNet_raw root; the dataset folder it makes there must not be, hold or
    lie inside the source."""
    source = {"is": tmp_path / "raw" / "Dataset504_STU", "contains": tmp_path / "raw" / "Dataset504_STU" / "src",
              "lies inside": tmp_path / "download"}[relation]
    replicas.write_stu(source)
    folder = OUTPUT_FOR[relation](source)
    if relation == "lies inside":
        folder = source / "Dataset504_STU"
    before = snapshot(source.parent)
    assert main(["convert", "stu", str(source), "-o", str(folder.parent), "--no-progress", "--folds", "3",
                 "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert f"dataset folder {folder} {relation} the input {source}" in err and "Traceback" not in err
    assert snapshot(source.parent) == before


def test_convert_dataset_folder_holding_a_classes_csv_is_refused(tmp_path, capsys):
    """A file a converter option names (folder's --classes-csv) is an input too."""
    source = tmp_path / "scans"
    for name in ("x", "y"):
        save_mask(source / "images" / f"{name}.png")
        save_mask(source / "masks" / f"{name}.png")
    folder = tmp_path / "raw" / "Dataset599_UltrasoundFolder"
    folder.mkdir(parents=True)
    (folder / OUTPUT_MARKER).write_text("")
    classes = folder / "classes.csv"
    classes.write_text("case,class\nx,benign\ny,malignant\n")
    assert main(["convert", "folder", str(source), "-o", str(folder.parent), "--classes-csv", str(classes),
                 "--no-progress", "--folds", "2", "--overwrite"]) == 1
    assert f"{folder} contains the input {classes}" in capsys.readouterr().err
    assert classes.read_text() == "case,class\nx,benign\ny,malignant\n"


# ---------------------------------------------------------------------------------------------
# --overwrite replaces only a folder bus-nnunet wrote
# ---------------------------------------------------------------------------------------------
def test_overwrite_refuses_a_folder_bus_nnunet_did_not_write(command, tmp_path, capsys):
    _, argv = command
    users_folder = tmp_path / "thesis"
    (users_folder / "chapter").mkdir(parents=True)
    (users_folder / "chapter" / "draft.txt").write_text("three years of work")
    assert main(argv(users_folder) + ["--overwrite"]) == 1
    err = capsys.readouterr().err
    assert f"{users_folder} was not written by bus-nnunet" in err and OUTPUT_MARKER in err
    assert (users_folder / "chapter" / "draft.txt").read_text() == "three years of work"


def test_overwrite_refuses_a_file_where_the_output_folder_goes(tmp_path, capsys):
    _, argv = evaluate_command(tmp_path / "work")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(argv(notes) + ["--overwrite"]) == 1
    assert f"{notes} is a file" in capsys.readouterr().err and notes.read_text() == "mine"


def test_convert_overwrite_refuses_a_dataset_folder_bus_nnunet_did_not_write(tmp_path, capsys):
    source, _ = replicas.write_stu(tmp_path / "src")
    handmade = tmp_path / "raw" / "Dataset504_STU"
    (handmade / "imagesTr").mkdir(parents=True)
    (handmade / "imagesTr" / "case_0000.png").write_bytes(b"labelled by hand")
    assert main(["convert", "stu", str(source), "-o", str(tmp_path / "raw"), "--no-progress", "--folds", "3",
                 "--overwrite"]) == 1
    assert f"{handmade} was not written by bus-nnunet" in capsys.readouterr().err
    assert (handmade / "imagesTr" / "case_0000.png").read_bytes() == b"labelled by hand"


@pytest.mark.parametrize("name", ["evaluate", "uncertainty"])
def test_overwrite_replaces_a_folder_bus_nnunet_wrote(tmp_path, name, capsys):
    _, argv = COMMANDS[name](tmp_path / "work")
    out = tmp_path / "results"
    assert main(argv(out)) == 0
    assert (out / OUTPUT_MARKER).is_file()
    (out / "stale.txt").write_text("from an older run")
    assert main(argv(out)) == 1 and "--overwrite" in capsys.readouterr().err  # never without asking
    assert main(argv(out) + ["--overwrite"]) == 0
    assert (out / OUTPUT_MARKER).is_file() and not (out / "stale.txt").exists()


def test_converted_dataset_carries_the_marker_and_may_be_overwritten(tmp_path):
    source, _ = replicas.write_stu(tmp_path / "src")
    argv = ["convert", "stu", str(source), "-o", str(tmp_path / "raw"), "--no-progress", "--folds", "3"]
    assert main(argv) == 0
    folder = tmp_path / "raw" / "Dataset504_STU"
    assert (folder / OUTPUT_MARKER).is_file()
    assert main(argv + ["--overwrite"]) == 0 and len(list((folder / "imagesTr").iterdir())) == 6


def test_demo_folder_carries_the_marker_so_make_demo_runs_twice(tmp_path, monkeypatch, capsys):
    """``make demo`` runs ``bus-nnunet demo --out demo_output --overwrite``; the pipeline itself
    (conversion, training) is replaced by a stub: only the folder handling is under test."""
    from bus_nnunet import demo

    def pipeline_stub(self):
        (self.out / "report.md").write_text("stub")
        return {"mean_dice": 0.9, "baseline_all_foreground_dice": 0.1, "baseline_empty_dice": 0.0, "learned": True}

    monkeypatch.setattr(demo.DemoRun, "run", pipeline_stub)
    out = tmp_path / "demo_output"
    argv = ["demo", "--out", str(out), "--quick", "--device", "cpu", "--overwrite"]
    assert main(argv) == 0 and (out / OUTPUT_MARKER).is_file()
    (out / "stale.txt").write_text("from the first run")
    assert main(argv) == 0 and (out / OUTPUT_MARKER).is_file() and not (out / "stale.txt").exists()

    users_folder = tmp_path / "data"
    users_folder.mkdir()
    (users_folder / "scan.png").write_bytes(b"\x89PNG")
    capsys.readouterr()
    assert main(["demo", "--out", str(users_folder), "--device", "cpu", "--overwrite"]) == 1
    assert f"{users_folder} was not written by bus-nnunet" in capsys.readouterr().err
    assert (users_folder / "scan.png").read_bytes() == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# a full disk (issue 22, item 8)
# ---------------------------------------------------------------------------------------------
def disk_full():
    # as PIL, numpy and json raise it on a real full disk: no file name
    return OSError(errno.ENOSPC, "No space left on device")


def one_line_naming(err: str, folder: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write {folder}: No space left on device (" in lines[0]
    assert " free of " in lines[0] and "the disk is full: free space or write elsewhere" in lines[0]


def test_a_full_disk_during_convert_is_one_line_with_the_folder_and_free_space(tmp_path, monkeypatch, capsys):
    from bus_nnunet.dataset_conversion import pipeline
    source, _ = replicas.write_stu(tmp_path / "src")
    written = []
    write_case = pipeline.write_case

    def write_case_until_the_disk_is_full(*args, **kwargs):
        if len(written) == 2:
            raise disk_full()
        written.append(write_case(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(pipeline, "write_case", write_case_until_the_disk_is_full)
    raw = tmp_path / "raw"
    assert main(["convert", "stu", str(source), "-o", str(raw), "--no-progress", "--folds", "3"]) == 1
    one_line_naming(capsys.readouterr().err, raw / "Dataset504_STU")
    assert len(written) == 2 and list(raw.iterdir()) == []  # nothing left behind, the partial folder neither


def test_a_full_disk_during_evaluate_is_one_line_too(tmp_path, monkeypatch, capsys):
    from bus_nnunet import io_utils
    _, argv = evaluate_command(tmp_path / "work")

    def write_json_on_a_full_disk(*args, **kwargs):
        raise disk_full()

    monkeypatch.setattr(io_utils, "atomic_write_json", write_json_on_a_full_disk)
    out = tmp_path / "results"
    assert main(argv(out)) == 1
    one_line_naming(capsys.readouterr().err, out)
    assert not out.exists() and not list(tmp_path.glob(".results*"))


def test_free_space_text_names_the_file_system_of_a_path_not_made_yet(tmp_path):
    from bus_nnunet.io_utils import free_space_text, format_size
    assert free_space_text(tmp_path / "not" / "made" / "yet").endswith(
        "free of " + format_size(shutil.disk_usage(tmp_path).total))
    assert (format_size(512), format_size(1536), format_size(3 * 2 ** 30)) == ("512 B", "1.5 KiB", "3.0 GiB")
