"""Recovery after a kill: a checkpoint on disk is always whole, and an unreadable one is named
with the way out instead of a zip-reader traceback on ``--c``."""
import textwrap

import pytest
import torch
from _processes import sigkill_when_printed

from bus_nnunet.trainers.base import AtomicCheckpointMixin

SLOW_SAVE = textwrap.dedent("""
    import io, sys, time, torch
    from bus_nnunet.trainers.base import AtomicCheckpointMixin

    class SlowTrainer:  # stands in for nnUNetTrainer: its save_checkpoint is a plain torch.save
        def save_checkpoint(self, filename):
            buf = io.BytesIO()
            torch.save({"epoch": 2, "weights": torch.arange(100000.)}, buf)
            with open(filename, "wb") as f:  # torch.save slowed down: half written, then a long pause
                data = buf.getvalue()
                f.write(data[: len(data) // 2]); f.flush()
                print("half written", flush=True)
                time.sleep(60)
                f.write(data[len(data) // 2:])

        def print_to_log_file(self, *args):
            print(*args)

    class Trainer(AtomicCheckpointMixin, SlowTrainer):
        pass

    Trainer().save_checkpoint(sys.argv[1])
""")


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    torch.save({"epoch": 1, "weights": torch.zeros(3)}, target)
    sigkill_when_printed(SLOW_SAVE, target, line="half written")
    assert torch.load(target, weights_only=False)["epoch"] == 1  # the old checkpoint, whole
    partial = list(tmp_path.glob(".checkpoint_latest.pth.partial-*"))
    assert len(partial) == 1  # what the kill left is hidden and never read ...

    class Quick:
        def save_checkpoint(self, filename):
            torch.save({"epoch": 3}, filename)

        def print_to_log_file(self, *args):  # nnUNetTrainer's logger
            print(*args)

    class Trainer(AtomicCheckpointMixin, Quick):
        pass

    Trainer().save_checkpoint(str(target))
    assert torch.load(target, weights_only=False)["epoch"] == 3
    assert not list(tmp_path.glob(".checkpoint_latest.pth.partial-*"))  # ... and the next save removes it


def test_unreadable_checkpoint_names_the_file_and_the_fallback(tmp_path):
    class Loaded:
        def load_checkpoint(self, checkpoint):
            self.loaded = checkpoint

    class Trainer(AtomicCheckpointMixin, Loaded):
        device = torch.device("cpu")

    torch.save({"epoch": 4}, tmp_path / "checkpoint_best.pth")
    whole = tmp_path / "whole.pth"
    torch.save({"epoch": 5}, whole)
    data = whole.read_bytes()
    (tmp_path / "checkpoint_latest.pth").write_bytes(data[: len(data) // 2])  # cut short by a kill
    trainer = Trainer()
    with pytest.raises(RuntimeError, match=r"checkpoint_latest.pth cannot be read .*: delete it and --c resumes "
                                           r"from checkpoint_best.pth"):
        trainer.load_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    trainer.load_checkpoint(str(whole))
    assert trainer.loaded == str(whole)  # a whole checkpoint goes to nnU-Net's loader as it is
