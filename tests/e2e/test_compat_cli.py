"""First contact as an SRS user has it, with the real `nonstop` command (issue 11, items 9, 10, 11): SRS's
include sample run from its folder, a switched-off refer block, and a busy port named with its directive."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from tests.helpers import free_port, nonstop_cmd

pytestmark = pytest.mark.timeout(60)


def nonstop(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(nonstop_cmd(*args), capture_output=True, text=True, timeout=30, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))})


def test_srs_include_sample_runs_from_its_folder_and_a_missing_include_names_both_places(tmp_path):
    srs = tmp_path / "srs"
    (srs / "conf").mkdir(parents=True)
    (srs / "conf" / "include.conf").write_text(
        "listen 1935;\nmax_connections 1000;\nsrs_log_tank console;\ndaemon off;\n"
        "http_api { enabled on; listen 1985; }\nhttp_server { enabled on; listen 8080; dir ./objs/nginx/html; }\n"
        "include ./conf/include.vhost.conf;\n")
    (srs / "conf" / "include.vhost.conf").write_text(
        "vhost include.srs.com {\n    hls { enabled on; }\n"
        "    http_remux { enabled on; mount [vhost]/[app]/[stream].flv; }\n}\n")
    result = nonstop("-t", "-c", "conf/include.conf", cwd=srs)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stdout
    # From elsewhere, neither place has it: the error says where it looked.
    result = nonstop("-t", "-c", str(srs / "conf" / "include.conf"), cwd=tmp_path)
    assert result.returncode == 3
    print(result.stderr.strip())
    assert f"{srs / 'conf' / 'include.conf'}:7: include: cannot read './conf/include.vhost.conf'" in result.stderr
    assert f"'{srs}/conf/./conf/include.vhost.conf' (No such file or directory)" in result.stderr
    assert f"working directory '{tmp_path}'" in result.stderr


def test_srs_refer_blocks_start_switched_off_or_on(tmp_path):
    """SRS's sample refer block, switched off (issue 11, item 9) and on (checked since access control, issue 12)."""
    conf = tmp_path / "refer.conf"
    conf.write_text("listen 1935;\nvhost __defaultVhost__ {\n    refer {\n        enabled off;\n"
                    "        all github.com github.io;\n        publish github.com;\n        play github.com;\n"
                    "    }\n}\n")
    result = nonstop("-t", "-c", str(conf), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stdout
    conf.write_text(conf.read_text().replace("enabled off", "enabled on"))
    result = nonstop("-t", "-c", str(conf), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    conf.write_text(conf.read_text().replace("play github.com;", "play;"))
    result = nonstop("-t", "-c", str(conf), cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    print(result.stderr.strip())


@pytest.mark.parametrize("busy, directive", [("rtmp", "listen"), ("http", "http_server.listen"),
                                              ("api", "http_api.listen")])
@pytest.mark.parametrize("master", ["on", "off"])
def test_a_busy_port_is_named_with_its_directive(tmp_path, busy, directive, master):
    ports = {"rtmp": free_port(), "http": free_port(), "api": free_port()}
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", ports[busy]))
    holder.listen(1)
    try:
        conf = tmp_path / "busy.conf"
        conf.write_text(f"listen 127.0.0.1:{ports['rtmp']};\ndaemon off;\nmaster_process {master};\n"
                        f"pid {tmp_path}/nonstop.pid;\nsrs_log_tank console;\n"
                        f"http_api {{ enabled on; listen 127.0.0.1:{ports['api']}; }}\n"
                        f"http_server {{ enabled on; listen 127.0.0.1:{ports['http']}; }}\n")
        result = nonstop("-c", str(conf), cwd=tmp_path)
    finally:
        holder.close()
    output = result.stdout + result.stderr
    print(output.strip().splitlines()[-1])
    assert result.returncode == 1
    assert f"Address already in use: 127.0.0.1:{ports[busy]} ({directive} in {conf})" in output
