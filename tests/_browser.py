"""A page rendered in a real headless browser (Debian's chromium, which .ci/run installs), for the
tests that check what a person sees of summary.html: the test skips where chromium is missing."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest


def screenshot_pixels(page: Path, shot: Path, size=(1000, 900)) -> np.ndarray:
    """The RGB pixels (N x 3) of ``page`` rendered at ``size`` (width, height) into ``shot``."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (.ci/run installs it): the page was not rendered")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    f"--window-size={size[0]},{size[1]}", Path(page).as_uri()], capture_output=True, timeout=120)
    from PIL import Image
    return np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
