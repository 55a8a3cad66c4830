"""Configs as SRS's samples write them (issue 11, items 9 and 10)."""

from __future__ import annotations

import os

import pytest

from nonstop.config import load, load_text
from nonstop.config.errors import ConfigError


def test_a_switched_off_refer_block_is_accepted_with_its_rules_and_stays_off():
    config = load_text("listen 1935;\nvhost v {\n refer { enabled off; all github.com; play a.com; } }\n",
                       "nonstop.conf", env={})
    assert config.warnings == [] and not config.vhosts["v"].refer.enabled


def test_a_later_enabled_on_in_a_refer_block_turns_it_on():
    # Since access control exists (issue 12) an enabled refer block is checked, not refused; every `enabled`
    # counts, as in SRS, so a later `enabled on` wins.
    config = load_text("listen 1935;\nvhost v { refer { enabled off;\n enabled on; play a.com; } }\n",
                       "nonstop.conf", env={})
    assert config.vhosts["v"].refer.enabled


def test_include_falls_back_to_the_working_directory_as_srs_samples_expect(tmp_path, monkeypatch):
    # SRS's conf/include.conf says `include ./conf/include.vhost.conf;` and is run from SRS's folder.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "include.vhost.conf").write_text("vhost __defaultVhost__ { play { gop_cache off; } }\n")
    (tmp_path / "conf" / "include.conf").write_text("listen 1935;\ninclude ./conf/include.vhost.conf;\n")
    monkeypatch.chdir(tmp_path)
    config = load("conf/include.conf", env={})
    assert config.vhosts["__defaultVhost__"].play.gop_cache is False


def test_include_beside_the_including_file_wins_over_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "main.conf").write_text("listen 1935;\ninclude part.conf;\n")
    (tmp_path / "etc" / "part.conf").write_text("max_connections 7;\n")
    (tmp_path / "part.conf").write_text("max_connections 9;\n")
    monkeypatch.chdir(tmp_path)
    assert load(str(tmp_path / "etc" / "main.conf"), env={}).max_connections == 7


def test_a_missing_include_names_both_places(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "main.conf").write_text("listen 1935;\ninclude ./conf/x.conf;\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load("etc/main.conf", env={})
    message = str(info.value)
    assert message.startswith("etc/main.conf:2: include: cannot read './conf/x.conf': ")
    assert "'etc/./conf/x.conf' (No such file or directory)" in message
    assert f"working directory {str(tmp_path)!r}, as './conf/x.conf'" in message
    assert os.getcwd() == str(tmp_path)
