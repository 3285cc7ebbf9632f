"""Model registry: cache location, download with resume and checksum, offline message, CLI."""

from __future__ import annotations

import hashlib
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from reenact import models
from reenact.errors import ReenactError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class RangeHandler(BaseHTTPRequestHandler):
    def __init__(self, *args, log: list, **kwargs):
        self.log = log
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        self.log.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = PAYLOAD[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    log: list = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, log=log))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/m.pt", log
    httpd.shutdown()


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("REENACT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "reenact"
    assert models.model_path("vox") == tmp_path / "reenact" / "models" / "lia-vox.pt"
    monkeypatch.setenv("REENACT_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_registry_lists_licence():
    for info, _, _ in models.list_models():
        assert info.license and info.page
        if info.name.startswith("lia-"):
            assert "CC BY-NC 4.0" in info.license
    assert "MIT" in models.get_model("contentvec").license
    with pytest.raises(ReenactError, match="unknown model"):
        models.get_model("nope")


def test_fetch_resumes_and_checks_sha256(monkeypatch, tmp_path, server):
    url, log = server
    monkeypatch.setenv("REENACT_CACHE", str(tmp_path))
    info = models.ModelInfo("t", "test", url, "http://example.invalid/page", "test",
                            sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    path = models.model_path(info)
    path.parent.mkdir(parents=True)
    path.with_name(path.name + ".partial").write_bytes(PAYLOAD[:300_000])  # an interrupted download
    seen = []
    assert models.fetch(info, progress=lambda d, t: seen.append((d, t))) == path
    assert path.read_bytes() == PAYLOAD and log == ["bytes=300000-"]
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not path.with_name(path.name + ".partial").exists()
    # a wrong checksum is refused and the file is not installed
    bad = models.ModelInfo("u", "test", url, "page", "test", sha256="0" * 64)
    with pytest.raises(ReenactError, match="sha256"):
        models.fetch(bad)
    assert not models.model_path(bad).exists()


def test_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("REENACT_CACHE", str(tmp_path))
    info = models.ModelInfo("x", "test", "http://127.0.0.1:9/x.pt", "https://example.org/page", "test")
    with pytest.raises(ReenactError) as exc:
        models.fetch(info, timeout=5)
    assert "https://example.org/page" in str(exc.value) and str(models.model_path(info)) in str(exc.value)
    with pytest.raises(ReenactError, match="models fetch lia-vox"):
        models.resolve_checkpoint("vox")
    assert models.resolve_checkpoint("deterministic") == "deterministic"


def test_cli(monkeypatch, tmp_path):
    from reenact.cli import app

    monkeypatch.setenv("REENACT_CACHE", str(tmp_path))
    runner = CliRunner()
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "CC BY-NC 4.0" in res.output and "lia-vox" in res.output
    res = runner.invoke(app, ["models", "path", "vox"])
    assert res.exit_code == 0 and res.output.strip() == str(tmp_path / "models" / "lia-vox.pt")
    res = runner.invoke(app, ["models", "fetch", "ted"])
    assert res.exit_code == 2 and "save it as" in res.output
