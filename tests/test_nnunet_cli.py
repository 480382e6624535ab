"""nnU-Net's own command-line tools find, train, validate and predict with our trainers (CPU smoke runs)."""
import json

import _nnunet


def test_nnunet_trainer_us_train_val_predict(planned_dataset, tmp_path):
    ds = planned_dataset
    env = ds.results_env(tmp_path)
    proc = _nnunet.train_cli(ds, env, "nnUNetTrainerUS")
    assert "ultrasound augmentation" in proc.stdout
    folder = _nnunet.model_folder(env, "nnUNetTrainerUS")
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    assert ckpt.is_file()
    import torch
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["trainer_name"] == "nnUNetTrainerUS"
    assert tuple(saved["inference_allowed_mirroring_axes"]) == (1,)  # lateral only
    summary = json.loads((folder / "fold_0" / "validation" / "summary.json").read_text())
    assert "foreground_mean" in summary

    # --val re-runs validation from the checkpoint (with --npz for ensembling)
    _nnunet.run(["nnUNetv2_train", ds.dataset_id, "2d", 0, "-tr", "nnUNetTrainerUS", "-device", "cpu",
                 "--val", "--npz"], env)
    assert list((folder / "fold_0" / "validation").glob("*.npz"))

    out = tmp_path / "pred"
    _nnunet.predict_and_check_masks(ds, env, "nnUNetTrainerUS", out)
