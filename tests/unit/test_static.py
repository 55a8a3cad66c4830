"""Static files from http_server.dir (issue 11, item 7): path safety, MIME types, Range, If-Modified-Since."""

from __future__ import annotations

import email.utils
import os

import pytest

from nonstop.server import static


@pytest.fixture
def root(tmp_path):
    www = tmp_path / "www"
    (www / "players" / "js").mkdir(parents=True)
    (www / "players" / "srs_player.html").write_text("<html>player</html>")
    (www / "players" / "js" / "app.js").write_text("var x = 1;")
    (www / "index.html").write_text("<html>index</html>")
    (www / "data.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "secret.txt").write_text("secret")
    (www / "out").symlink_to(tmp_path)                       # a directory link out of dir
    (www / "leak.txt").symlink_to(tmp_path / "secret.txt")   # a file link out of dir
    (www / "inside.html").symlink_to(www / "index.html")     # a link that stays inside: fine
    return str(www)


def test_files_and_index_resolve(root):
    assert static.resolve(root, "/players/srs_player.html") == os.path.join(root, "players", "srs_player.html")
    assert static.resolve(root, "/") == os.path.join(root, "index.html")
    assert static.resolve(root, "/players/js/app%2Ejs") == os.path.join(root, "players", "js", "app.js")
    assert static.resolve(root, "/inside.html") == os.path.join(root, "index.html")


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/players/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt",
    "/players/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt",
    "//etc/passwd", "/%2fetc/passwd", "/etc/passwd/", "/out/secret.txt", "/leak.txt", "/players/./srs_player.html",
    "/players\\..\\..\\secret.txt", "/%00index.html", "/index.html%00.png", "/%ff%fe", "relative.html",
    "/players/srs_player.html/",
])
def test_nothing_outside_dir_resolves(root, path):
    assert static.resolve(root, path) is None


def test_a_path_is_decoded_once(root):
    # %252e%252e is the literal name "%2e%2e" (a folder that is not there), never "..".
    found = static.resolve(root, "/%252e%252e/secret.txt")
    assert found == os.path.join(root, "%2e%2e", "secret.txt")
    assert static.plan(found, "GET", {}).status == 404


def test_mime_types(root):
    assert static.plan(os.path.join(root, "index.html"), "GET", {}).headers["Content-Type"].startswith("text/html")
    assert static.plan(os.path.join(root, "players/js/app.js"), "GET", {}).headers["Content-Type"] == \
        "text/javascript"
    assert static.plan(os.path.join(root, "data.bin"), "GET", {}).headers["Content-Type"] == \
        "application/octet-stream"
    assert static.MIME_TYPES[".m3u8"] == "application/vnd.apple.mpegurl" and static.MIME_TYPES[".ts"] == "video/MP2T"


@pytest.mark.parametrize("header, status, first, length", [
    ("bytes=0-99", 206, 0, 100), ("bytes=1000-", 206, 1000, 24), ("bytes=-24", 206, 1000, 24),
    ("bytes=1000-5000", 206, 1000, 24), ("bytes=1024-", 416, 0, 0), ("bytes=-0", 416, 0, 0),
    ("bytes=0-1,5-6", 200, 0, 1024), ("items=0-1", 200, 0, 1024), ("bytes=abc", 200, 0, 1024),
    ("bytes=5-2", 200, 0, 1024),
])
def test_ranges(root, header, status, first, length):
    answer = static.plan(os.path.join(root, "data.bin"), "GET", {"range": header})
    assert (answer.status, answer.offset, answer.length) == (status, first, length)
    if status == 206:
        assert answer.headers["Content-Range"] == f"bytes {first}-{first + length - 1}/1024"
        assert answer.headers["Content-Length"] == str(length)
    if status == 416:
        assert answer.headers["Content-Range"] == "bytes */1024"


def test_if_modified_since(root):
    path = os.path.join(root, "index.html")
    mtime = int(os.stat(path).st_mtime)
    same = email.utils.formatdate(mtime, usegmt=True)
    older = email.utils.formatdate(mtime - 60, usegmt=True)
    answer = static.plan(path, "GET", {"if-modified-since": same})
    assert answer.status == 304 and answer.length == 0 and answer.headers["Last-Modified"] == same
    assert static.plan(path, "GET", {"if-modified-since": older}).status == 200
    assert static.plan(path, "GET", {"if-modified-since": "garbage"}).status == 200


def test_head_has_no_body_and_a_directory_is_not_a_file(root):
    answer = static.plan(os.path.join(root, "data.bin"), "HEAD", {})
    assert answer.status == 200 and answer.length == 0 and answer.headers["Content-Length"] == "1024"
    assert static.plan(os.path.join(root, "players"), "GET", {}).status == 404
