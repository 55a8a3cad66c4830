"""Static files from `http_server.dir` on a real server, driven by curl (issue 11, item 7): the SRS console's
player page, MIME types, Range, If-Modified-Since, HEAD, every way out of dir refused, FLV mounts first."""

from __future__ import annotations

import email.utils
import os
import subprocess
from dataclasses import dataclass

import pytest

from tests.helpers import Server, publish_file, stop_proc, wait_for

pytestmark = pytest.mark.timeout(90)


@dataclass
class StaticServer(Server):
    def config_text(self) -> str:
        return super().config_text().replace(
            f"http_server {{ enabled on; listen 127.0.0.1:{self.http_port}; }}",
            f"http_server {{ enabled on; listen 127.0.0.1:{self.http_port}; dir {self.workdir}/www; }}")


def curl(*args: str, ok=(0,)) -> tuple[int, dict, bytes]:
    """status, headers (lower-case names), body."""
    out = subprocess.run(["curl", "-sS", "--path-as-is", "-D", "-", *args], capture_output=True, timeout=20)
    assert out.returncode in ok, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def server():
    s = StaticServer()
    www = s.workdir / "www"
    (www / "players" / "js").mkdir(parents=True)
    (www / "players" / "srs_player.html").write_text("<html>srs player</html>")
    (www / "players" / "js" / "app.js").write_text("var x = 1;")
    (www / "index.html").write_text("<html>index</html>")
    (www / "live").mkdir()
    (www / "live" / "s.flv").write_bytes(b"a file, not the stream")
    (www / "video.bin").write_bytes(os.urandom(300_000))
    (s.workdir / "secret.txt").write_text("secret")
    (www / "out").symlink_to(s.workdir)
    (www / "leak.txt").symlink_to(s.workdir / "secret.txt")
    with s:
        yield s


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def test_the_consoles_player_page_and_mime_types(server):
    status, headers, body = curl(base(server) + "/players/srs_player.html")
    assert status == 200 and body == b"<html>srs player</html>"
    assert headers["content-type"] == "text/html; charset=utf-8" and headers["content-length"] == str(len(body))
    assert curl(base(server) + "/players/js/app.js")[1]["content-type"] == "text/javascript"
    assert curl(base(server) + "/video.bin")[1]["content-type"] == "application/octet-stream"
    status, _, body = curl(base(server) + "/")
    assert status == 200 and body == b"<html>index</html>"
    status, headers, body = curl("-I", base(server) + "/video.bin")      # HEAD (curl prints the head twice)
    assert status == 200 and headers["content-length"] == "300000" and b"\r\n\r\n" not in body.strip()
    assert curl(base(server) + "/missing.html")[0] == 404


def test_range_requests(server):
    data = (server.workdir / "www" / "video.bin").read_bytes()
    status, headers, body = curl("-r", "1000-1999", base(server) + "/video.bin")
    assert status == 206 and body == data[1000:2000]
    assert headers["content-range"] == "bytes 1000-1999/300000" and headers["accept-ranges"] == "bytes"
    status, _, body = curl("-r", "-500", base(server) + "/video.bin")
    assert status == 206 and body == data[-500:]
    status, headers, _ = curl("-r", "400000-", base(server) + "/video.bin")
    assert status == 416 and headers["content-range"] == "bytes */300000"
    status, _, body = curl(base(server) + "/video.bin")
    assert status == 200 and body == data, "the whole file, through sendfile"


def test_if_modified_since(server):
    _, headers, _ = curl(base(server) + "/index.html")
    last_modified = headers["last-modified"]
    status, _, body = curl("-H", f"If-Modified-Since: {last_modified}", base(server) + "/index.html")
    assert status == 304 and body == b""
    mtime = os.stat(server.workdir / "www" / "index.html").st_mtime
    older = email.utils.formatdate(mtime - 3600, usegmt=True)
    assert curl("-H", f"If-Modified-Since: {older}", base(server) + "/index.html")[0] == 200


@pytest.mark.parametrize("path", ["/../secret.txt", "/players/../../secret.txt", "/%2e%2e/secret.txt",
                                  "/%2E%2E%2fsecret.txt", "/out/secret.txt", "/leak.txt", "//etc/passwd",
                                  "/%2fetc/passwd", "/players/..%5c..%5csecret.txt"])
def test_no_way_out_of_dir(server, path):
    status, _, body = curl(base(server) + path)
    assert status in (400, 404) and b"secret" not in body and b"root:" not in body, (path, status, body)


def test_an_flv_mount_wins_over_a_file(server, test_flv):
    # Not published: the mount answers 404, the file of that name is not served.
    status, _, body = curl(base(server) + "/live/s.flv")
    assert status == 404 and body != b"a file, not the stream"
    publisher = publish_file(server.rtmp_url("s"), test_flv)
    try:
        wait_for(lambda: "publish __defaultVhost__/live/s," in server.log(), 20, what="the publisher")
        # A live stream never ends: curl stops it after 2 s (exit 28).
        status, headers, body = curl("--max-time", "2", base(server) + "/live/s.flv", ok=(28,))
    finally:
        stop_proc(publisher)
    assert status == 200 and headers["content-type"] == "video/x-flv"
