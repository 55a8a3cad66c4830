from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import make_test_flv


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    if not shutil.which("ffmpeg"):
        pytest.fail("ffmpeg is not installed: `make test` installs it with apt-get")
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def test_flv(media_dir) -> Path:
    """12 s of 320x240 25 fps H.264 (keyframe every second) and AAC, pre-encoded once."""
    return make_test_flv(media_dir / "test.flv")
