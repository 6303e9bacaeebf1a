"""The shared downloader against a local HTTP server started by the test (never the internet)."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer as _Server

import pytest

from neuroprobe.download import download, extract, fetch, mirror_url, KNOWN
from neuroprobe.errors import DownloadError

PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(300_000))


class ThreadingHTTPServer(_Server):
    """The test server; client hang-ups (expected here) are not printed."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/missing.bin":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/stall.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            time.sleep(1.5)
            return
        if self.path == "/norange.bin":  # a server that ignores Range
            return self._send(PAYLOAD, None, ignore_range=True)
        data = srv.files.get(self.path.split("/", 2)[-1] if self.path.startswith("/m/")
                             else self.path.lstrip("/"))
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(data, srv.drop_after.pop(self.path, None))

    def _send(self, data, drop_after, ignore_range=False):
        start = 0
        rng = self.headers.get("Range")
        if rng and not ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop_after is not None:
            self.wfile.write(body[:drop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files = {"data.bin": PAYLOAD}
    srv.drop_after = {}
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_plain_download_verified(server, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert download(server.url + "/data.bin", dest, sha256=sha, size=len(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "out" / "data.bin.part").exists()
    # a second call finds the verified file and does not ask the server again
    n = len(server.requests)
    download(server.url + "/data.bin", dest, sha256=sha)
    assert len(server.requests) == n


def test_interrupted_transfer_resumes_to_the_right_bytes(server, tmp_path):
    server.drop_after["/data.bin"] = 123_457
    dest = tmp_path / "data.bin"
    download(server.url + "/data.bin", dest, backoff=0, chunk_size=4096,
             sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD
    ranges = [r for p, r in server.requests if p == "/data.bin"]
    assert ranges[0] is None
    # the resume starts where the part file ended (bytes of a chunk cut by the broken
    # connection may be dropped and fetched again)
    start = int(ranges[1].split("=")[1].rstrip("-"))
    assert 100_000 < start <= 123_457 and len(ranges) == 2


def test_resume_from_part_file_of_an_earlier_run(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:5000])
    download(server.url + "/data.bin", dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1][1] == "bytes=5000-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "x.bin"
    (tmp_path / "x.bin.part").write_bytes(b"garbage" * 10)
    download(server.url + "/norange.bin", dest)
    assert dest.read_bytes() == PAYLOAD


def test_404_is_one_clear_line(server, tmp_path):
    dest = tmp_path / "m.bin"
    with pytest.raises(DownloadError) as exc:
        download(server.url + "/missing.bin", dest, backoff=0)
    msg = str(exc.value)
    assert "HTTP 404" in msg and "missing.bin" in msg and "\n" not in msg
    assert not dest.exists() and not (tmp_path / "m.bin.part").exists()
    assert len(server.requests) == 1  # 4xx is not retried


def test_timeout_is_one_clear_line(server, tmp_path):
    dest = tmp_path / "s.bin"
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as exc:
        download(server.url + "/stall.bin", dest, timeout=0.3, retries=1, backoff=0)
    msg = str(exc.value)
    assert "2 tries" in msg and "stalled" in msg and "\n" not in msg
    assert not dest.exists()
    assert time.perf_counter() - t0 < 5


def test_connection_refused_is_one_clear_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as exc:
        download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", retries=1, backoff=0,
                 timeout=1)
    assert "cannot connect" in str(exc.value) and "\n" not in str(exc.value)


def test_checksum_and_size_mismatch(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="sha256"):
        download(server.url + "/data.bin", dest, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()
    with pytest.raises(DownloadError, match="expected 10"):
        download(server.url + "/data.bin", dest, size=10)
    assert not dest.exists()


def test_disk_space_check(server, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(DownloadError, match="disk space"):
        download(server.url + "/data.bin", tmp_path / "d.bin")
    assert not (tmp_path / "d.bin").exists()


def test_mirror(server, tmp_path, monkeypatch):
    assert mirror_url("http://netdissect.csail.mit.edu/data/broden1_224.zip",
                      "http://m.example/x/") == "http://m.example/x/data/broden1_224.zip"
    monkeypatch.setenv("NEUROPROBE_MIRROR", server.url + "/m")
    download("http://unreachable.invalid/data.bin", tmp_path / "d.bin")
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD
    assert server.requests[-1][0] == "/m/data.bin"


# -- archives --------------------------------------------------------------------------------

def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_extract_zip_and_tar(tmp_path):
    entries = {"top/a.txt": b"alpha", "top/sub/b.bin": PAYLOAD[:999]}
    z = tmp_path / "a.zip"
    z.write_bytes(_zip_bytes(entries))
    out = extract(z, tmp_path / "z")
    assert (out / "top/a.txt").read_bytes() == b"alpha"
    assert (out / "top/sub/b.bin").read_bytes() == PAYLOAD[:999]
    t = tmp_path / "a.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = extract(t, tmp_path / "t")
    assert (out / "top/sub/b.bin").read_bytes() == PAYLOAD[:999]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "a.zip", "t", "z"]


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_zip_entries_escaping_are_refused(tmp_path, name):
    z = tmp_path / "bad.zip"
    z.write_bytes(_zip_bytes({"fine.txt": b"x", name: b"evil"}))
    with pytest.raises(DownloadError, match="refused"):
        extract(z, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.zip"]


def test_tar_symlink_escaping_is_refused(tmp_path):
    t = tmp_path / "bad.tar"
    with tarfile.open(t, "w") as tf:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(DownloadError, match="outside the target"):
        extract(t, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tar"]


def test_corrupt_archive_leaves_nothing_behind(tmp_path):
    data = bytearray(_zip_bytes({f"d/f{i}.bin": os.urandom(20_000) for i in range(5)}))
    # damage the compressed bytes of the last member (its local header stays valid)
    data[-2000:-1500] = b"\0" * 500
    z = tmp_path / "corrupt.zip"
    z.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="corrupt"):
        extract(z, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["corrupt.zip"]
    # a truncated file is not an archive at all
    z.write_bytes(bytes(data[:100]))
    with pytest.raises(DownloadError):
        extract(z, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["corrupt.zip"]


def test_fetch_known_dataset_via_mirror(server, tmp_path, monkeypatch):
    server.files["data/broden1_224.zip"] = _zip_bytes({"broden1_224/index.csv": b"image\n"})
    monkeypatch.setenv("NEUROPROBE_MIRROR", server.url)
    folder = fetch("broden", tmp_path)
    assert folder == tmp_path / "broden1_224"
    assert (folder / "index.csv").read_bytes() == b"image\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broden1_224"]
    assert fetch("broden", tmp_path) == folder  # present: nothing fetched
    with pytest.raises(DownloadError, match="unknown data set"):
        fetch("brodn", tmp_path)
    assert "broden" in KNOWN


def test_cli_download(server, tmp_path, monkeypatch, capsys):
    from neuroprobe.cli import main

    assert main(["download", "--list"]) == 0
    assert "broden1_224.zip" in capsys.readouterr().out
    assert main(["download", "brodn", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuroprobe: error: unknown data set 'brodn'") and err.count("\n") == 1
    server.files["data/broden1_227.zip"] = _zip_bytes({"broden1_227/index.csv": b"image\n"})
    assert main(["download", "broden227", "--out", str(tmp_path), "--mirror", server.url]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "broden1_227")
    assert main(["download", "broden", "--out", str(tmp_path / "x"), "--mirror",
                 server.url + "/nothing", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and err.count("\n") == 1
    assert not any((tmp_path / "x").glob("*.part"))
