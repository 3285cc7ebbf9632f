"""`reenact ui`: access rules, the files it serves, and the whole job in a real browser.

The browser test drives Debian's Chromium (`apt-get install chromium`; Playwright's own browser
download is not used) headless against a server it starts on 127.0.0.1 on a free port. Its
screenshots are saved under the test's temporary folder (the path is printed; `-s` shows it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES, REPO
from reenact.cli import app
from reenact.errors import ReenactError

runner = CliRunner()


# ------------------------------------------------------------------ access rules (no server)

def test_non_loopback_host_needs_auth() -> None:
    from reenact.ui.server import check_access, is_loopback, parse_auth

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))
    check_access("127.0.0.1", None)
    check_access("0.0.0.0", ("u", "p"))
    with pytest.raises(ReenactError, match="--auth"):
        check_access("0.0.0.0", None)
    assert parse_auth("alice:s3:cret") == ("alice", "s3:cret")
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(ReenactError, match="USER:PASS"):
            parse_auth(bad)


@pytest.mark.parametrize("args", [["--host", "0.0.0.0"], ["--host", "10.1.2.3", "--port", "7999"],
                                  ["--auth", "nocolon"]])
def test_cli_refuses_with_one_line(args: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, ["ui", *args, "--work-dir", str(tmp_path / "work")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and ("--auth" in lines[0]), result.output
    assert "Traceback" not in result.output and not (tmp_path / "work").exists()


def test_jobs_run_one_at_a_time_and_answer_in_one_line(tmp_path: Path) -> None:
    import threading

    from reenact.ui.jobs import Jobs

    jobs = Jobs(tmp_path)
    upload = tmp_path / "gradio" / ("ab" * 32) / "notes.mp4"
    assert jobs.run(lambda: 42) == (42, "")
    result, message = jobs.run(lambda: (_ for _ in ()).throw(ReenactError("cannot be read as video", upload)))
    assert result is None and message == "notes.mp4: cannot be read as video"
    result, message = jobs.run(lambda: {}["key"])  # a bug: one line, no traceback
    assert result is None and message.startswith("internal error (KeyError") and "\n" not in message

    with pytest.raises(ReenactError):  # a failed job leaves no output folder behind
        with jobs.output_folder("alice") as folder:
            (folder / "half.mp4").write_bytes(b"half")
            raise ReenactError("stopped")
    assert list((tmp_path / "outputs").iterdir()) == []

    from reenact.ui.jobs import forget_copies, publish

    original = tmp_path / "portrait.png"
    original.write_bytes(b"portrait bytes")
    (tmp_path / "gradio" / ("cd" * 32)).mkdir(parents=True)
    (tmp_path / "gradio" / ("cd" * 32) / "upload.png").write_bytes(b"portrait bytes")
    (tmp_path / "gradio" / "other.png").write_bytes(b"other bytes!!!")
    shown = Path(publish(tmp_path, original))
    assert shown.read_bytes() == b"portrait bytes" and shown.is_relative_to(tmp_path / "gradio")
    assert forget_copies(tmp_path, [original]) == 2 and not shown.exists()
    assert [p.name for p in (tmp_path / "gradio").rglob("*") if p.is_file()] == ["other.png"]

    order: list[str] = []
    started = threading.Event()

    def slow() -> None:
        order.append("first starts")
        started.set()
        time.sleep(0.3)
        order.append("first ends")

    thread = threading.Thread(target=jobs.run, args=(slow,))
    thread.start()
    started.wait()
    jobs.run(lambda: order.append("second"))
    thread.join()
    assert order == ["first starts", "first ends", "second"]


# ------------------------------------------------------------------ a running server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """`reenact ui` on 127.0.0.1 on a free port, with its own work and subjects folders."""
    pytest.importorskip("gradio", reason="needs gradio (pip install -e '.[ui]')")
    base = tmp_path_factory.mktemp("ui")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    log = open(base / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "reenact.cli", "ui", "--port", str(port), "--work-dir",
                                str(base / "work"), "--subjects-dir", str(base / "subjects"), "--max-upload-mb", "4"],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if _get(url)[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the UI server did not start:\n{(base / 'server.log').read_text()}")
            time.sleep(0.5)
        yield {"url": url, "base": base, "work": (base / "work").resolve(), "subjects": base / "subjects"}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_serves_no_file_outside_the_work_folder(server: dict) -> None:
    url, work = server["url"], server["work"]
    (server["subjects"]).mkdir(exist_ok=True)
    secret = server["base"] / "secret.txt"
    secret.write_text("not for the web")
    inside = work / "outputs" / "probe.txt"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text("fine")
    for path in ("/etc/passwd", str(secret), str(REPO / "README.md"), str(EXAMPLES / "portrait.png"),
                 f"{work}/../secret.txt", f"{work}/outputs/../../secret.txt", "../secret.txt", "secret.txt"):
        for prefix in ("gradio_api/file=", "file="):
            code, body = _get(url + prefix + path)
            assert code in (403, 404), (prefix + path, code)
            assert b"not for the web" not in body and b"root:" not in body
    assert _get(url + "gradio_api/file=" + str(inside)) == (200, b"fine")  # the route works inside it
    for elsewhere in (work / "view.txt", work / "scratch" / "x.txt"):  # only outputs/ and the upload folder
        elsewhere.parent.mkdir(parents=True, exist_ok=True)
        elsewhere.write_text("not for the web")
        assert _get(url + "gradio_api/file=" + str(elsewhere))[0] in (403, 404)


def _post_file(url: str, name: str, data: bytes) -> tuple[int, list]:
    boundary = "reenact-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, []


def test_uploads_are_capped_and_served_only_as_downloads(server: dict) -> None:
    """The server was started with --max-upload-mb 4."""
    url = server["url"] + "gradio_api/upload"
    assert _post_file(url, "small.bin", b"x" * 1000)[0] == 200
    assert _post_file(url, "big.bin", b"x" * (5 * 2**20))[0] in (400, 413)
    assert not list(server["work"].glob("gradio/**/big.bin"))
    code, paths = _post_file(url, "consent.html", b"<script>alert('stored')</script>")
    assert code == 200 and len(paths) == 1
    with urllib.request.urlopen(server["url"] + "gradio_api/file=" + paths[0], timeout=10) as response:
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert "html" not in response.headers["Content-Type"]


# ------------------------------------------------------------------ the browser

def _chromium() -> str:
    for name in (os.environ.get("REENACT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.skip("needs Chromium (apt-get install chromium; `make test` installs it as root)")


def _short_driver(path: Path, seconds: float = 1.2) -> Path:
    """The first seconds of the example driver, video and sound, copied without re-encoding."""
    with av.open(str(EXAMPLES / "driver.mp4")) as src, av.open(str(path), "w") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in (src.streams.video[0], src.streams.audio[0])}
        for packet in src.demux(src.streams.video[0], src.streams.audio[0]):
            if packet.dts is None or packet.pts is None:
                continue
            if float(packet.pts * packet.time_base) >= seconds:
                continue
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    return path


@pytest.fixture(scope="module")
def page(server: dict):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[ui]')")
    executable = _chromium()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(server["url"])
        yield page
        browser.close()


def _upload(page, elem_id: str, *files: Path, check: bool = True) -> None:
    """Upload into a file component; wait until it lists the files (an upload over the cap never does)."""
    page.locator(f"#{elem_id} input[type=file]").set_input_files([str(f) for f in files])
    for f in files if check else ():  # the page shows the name in pieces ("consent", ".pdf")
        page.wait_for_function("([sel, name]) => document.querySelector(sel).innerText.replace(/\\s/g, '')"
                               ".includes(name)", arg=[f"#{elem_id}", f.name.replace(" ", "")])


def _status(page, elem_id: str, text: str, timeout: float = 60_000) -> str:
    """Wait until the status line `elem_id` shows `text`; return it (an unexpected error fails with its message).
    Call `_clear` on it before the click whose answer this waits for."""
    page.wait_for_function(
        "([sel, text]) => { const e = document.querySelector(sel); return e && (e.innerText.includes(text) || "
        "e.innerText.startsWith('error:')); }", arg=[f"#{elem_id} .reenact-status:not([data-seen])", text],
        timeout=timeout)
    shown = page.locator(f"#{elem_id} .reenact-status:not([data-seen])").inner_text()
    assert text in shown, shown
    return shown


def _clear(page, elem_id: str) -> None:
    """Forget the status line's last answer (so `_status` waits for the next one)."""
    page.evaluate("sel => document.querySelectorAll(sel).forEach(e => { e.dataset.seen = '1'; })",
                  f"#{elem_id} .reenact-status")


def test_subject_make_verify_in_the_browser(server: dict, page, tmp_path_factory: pytest.TempPathFactory) -> None:
    shots = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {shots}")
    data = tmp_path_factory.mktemp("inputs")
    consent = data / "consent.txt"
    consent.write_text("I, Ex Ample, consent to synthetic videos of me for research, disclosed as AI-generated.\n")
    driver = _short_driver(data / "driver.mp4")

    # Subjects: a portrait (its face shown), a consent document, a signer; no speech (the driver's voice is kept).
    page.get_by_role("tab", name="Subjects").click()
    page.locator("#subject-name input, #subject-name textarea").first.fill("ex")
    _upload(page, "subject-portrait", EXAMPLES / "portrait.png")
    page.locator("#subject-faces img").wait_for()
    _upload(page, "subject-consent", consent)
    page.locator("#subject-signer input, #subject-signer textarea").first.fill("Ex Ample")
    _clear(page, "subject-create-status")
    page.locator("#subject-create").click()
    _status(page, "subject-create-status", "created subject ex")
    page.screenshot(path=str(shots / "subjects.png"), full_page=True)
    record = json.loads((server["subjects"] / "ex" / "subject.json").read_text())
    assert record["consent"]["signer"] == "Ex Ample" and record["voice_model"] is None

    # Make: the example subject with a short driver at the fastest settings.
    page.get_by_role("tab", name="Make").click()
    page.locator("#make-subject input").first.wait_for()
    _upload(page, "make-driver", driver)
    page.locator("#make-size").get_by_text("256", exact=True).click()
    _clear(page, "make-status")
    page.locator("#make-run").click()
    progress = page.locator("#make-video .progress-level")
    progress.first.wait_for(timeout=30_000)
    try:  # the bar follows make's stages; catch it in one (a fast machine may pass them between two looks)
        page.wait_for_function("() => /(track|render|identity) \\d/.test(document.querySelector("
                               "'#make-video').innerText)", timeout=20_000, polling=100)
    except Exception:  # noqa: BLE001 - the screenshot is for people; the result is checked below
        pass
    page.screenshot(path=str(shots / "make-progress.png"), full_page=True)
    shown = _status(page, "make-status", "made ", timeout=240_000)
    outputs = sorted(server["work"].glob("outputs/*/*.mp4"))
    assert len(outputs) == 1, outputs
    report = json.loads(outputs[0].with_suffix(".json").read_text())
    assert report["watermark_payload"] in shown
    assert report["settings"]["size"] == 256 and report["backends"] == {"motion": "landmark", "voice": None}
    assert report["subject"]["signer"] == "Ex Ample" and "face" in report["measures"]
    duration = page.wait_for_function(
        "() => { const v = document.querySelector('#make-video video'); "
        "return v && v.readyState >= 1 && v.duration > 0 ? v.duration : null; }").json_value()
    assert abs(duration - report["video"]["frames"] / report["video"]["fps"]) < 0.2, duration
    page.evaluate("() => new Promise(done => { const v = document.querySelector('#make-video video'); "
                  "v.addEventListener('seeked', () => done(), {once: true}); v.currentTime = v.duration / 2; })")
    page.wait_for_timeout(300)  # the seeked frame painted, for the screenshot
    page.screenshot(path=str(shots / "make.png"), full_page=True)

    # The CLI, given the same subject, driver and settings, writes the same report (but for the new id and timings).
    cli_out = data / "cli.mp4"
    result = runner.invoke(app, ["make", "--subject", "ex", "--driver", report["inputs"]["driver"], "-o", str(cli_out),
                                 "--size", "256", "--subjects-dir", str(server["subjects"])])
    assert result.exit_code == 0, result.output
    cli = json.loads(cli_out.with_suffix(".json").read_text())
    assert cli.keys() == report.keys() and cli["measures"].keys() == report["measures"].keys()
    for key in ("subject", "inputs", "backends", "settings", "video"):
        assert cli[key] == report[key], key
    assert cli["measures"]["face"]["identity"]["median"] == pytest.approx(
        report["measures"]["face"]["identity"]["median"], abs=0.05)  # the marks differ (new id)

    # Verify: the output is marked, every layer says so.
    page.get_by_role("tab", name="Verify").click()
    _upload(page, "verify-file", outputs[0])
    _clear(page, "verify-verdict")
    page.locator("#verify-run").click()
    verdict = _status(page, "verify-verdict", "MARKED", timeout=120_000)
    assert report["watermark_payload"] in verdict
    page.screenshot(path=str(shots / "verify.png"), full_page=True)

    # A text file as driver: the CLI's one-line message in the page, nothing made.
    page.get_by_role("tab", name="Make").click()
    notes = data / "notes.mp4"
    notes.write_text("these are meeting notes, not a video\n")
    page.locator("#make-driver button[aria-label='Clear']").first.click()
    _upload(page, "make-driver", notes)
    _clear(page, "make-status")
    page.locator("#make-run").click()
    error = _status(page, "make-status", "notes.mp4", timeout=60_000)
    assert error.startswith("error:") and "\n" not in error.strip() and "Traceback" not in error, error
    assert sorted(server["work"].glob("outputs/*/*.mp4")) == outputs  # nothing half-made
    page.screenshot(path=str(shots / "make-error.png"), full_page=True)
    page.locator("#make-driver button[aria-label='Clear']").first.click()
    _upload(page, "make-driver", notes.rename(data / "notes.txt"), check=False)  # refused by type on upload
    page.get_by_text("Invalid file type").first.wait_for()
    page.screenshot(path=str(shots / "make-type.png"), full_page=True)

    page.get_by_role("tab", name="Models").click()
    page.locator("#models-table").wait_for()
    page.screenshot(path=str(shots / "models.png"), full_page=True)

    # Delete the subject: only once the box is ticked.
    page.get_by_role("tab", name="Subjects").click()
    _clear(page, "subject-delete-status")
    page.locator("#subject-delete").click()
    _status(page, "subject-delete-status", "tick the box")
    assert (server["subjects"] / "ex").exists()
    page.locator("#subject-delete-sure input").check()
    _clear(page, "subject-delete-status")
    page.locator("#subject-delete").click()
    _status(page, "subject-delete-status", "deleted")
    assert not (server["subjects"] / "ex").exists()
    portrait = (EXAMPLES / "portrait.png").read_bytes()  # nor do the page's copies of it stay behind
    assert not [p for p in server["work"].rglob("*") if p.is_file() and p.read_bytes() == portrait]


@pytest.mark.slow
def test_subject_with_speech_revoices_in_the_browser(server: dict, page,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """The voice path: speech uploaded, a voice model trained, the driver re-voiced and measured."""
    import numpy as np
    import soundfile as sf

    from reenact.media.audio import read_audio

    data = tmp_path_factory.mktemp("voiced")
    consent = data / "consent.pdf"
    consent.write_bytes(b"%PDF-1.4 signed consent of the subject (a stand-in for a scan)\n")
    # the example driver's 6.8 s of speech said 10 times: the 1 min a voice model needs at least
    speech = data / "speech.flac"  # 16 kHz FLAC: under the test server's 4 MiB upload cap
    sf.write(speech, np.tile(read_audio(EXAMPLES / "driver.mp4", 16000, mono=True).samples[0], 10), 16000)
    driver = _short_driver(data / "driver.mp4", seconds=2.0)

    page.goto(server["url"])  # a fresh page
    page.get_by_role("tab", name="Subjects").click()
    page.locator("#subject-name input, #subject-name textarea").first.fill("voiced")
    _upload(page, "subject-portrait", EXAMPLES / "portrait.png")
    page.locator("#subject-faces img").wait_for()
    _upload(page, "subject-speech", speech)
    _upload(page, "subject-consent", consent)
    _clear(page, "subject-create-status")
    page.locator("#subject-create").click()
    try:
        _status(page, "subject-create-status", "created subject voiced (with a voice model)", timeout=400_000)
    finally:
        page.screenshot(path=str(data / "created.png"), full_page=True)
        print(f"\nscreenshots: {data}")

    page.get_by_role("tab", name="Make").click()
    page.locator("#make-subject input").first.click()
    page.get_by_role("option", name="voiced").click()
    _upload(page, "make-driver", driver)
    _clear(page, "make-status")
    page.locator("#make-run").click()
    try:
        _status(page, "make-status", "made ", timeout=400_000)
    finally:
        page.screenshot(path=str(data / "made.png"), full_page=True)
    newest = max(server["work"].glob("outputs/*/voiced-*.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(newest.read_text())
    assert report["backends"]["voice"] == "world" and report["inputs"]["voice_model_sha256"]
    assert "cos_target" in report["measures"]["voice"]


def test_launch_options_are_safe(tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="needs gradio (pip install -e '.[ui]')")
    from reenact.ui.app import launch_options
    from reenact.ui.config import UIConfig

    options = launch_options(UIConfig(host="0.0.0.0", auth=("u", "p"), work_dir=tmp_path, max_upload_mb=3))
    assert options["share"] is False and options["auth"] == ("u", "p") and options["server_name"] == "0.0.0.0"
    assert options["allowed_paths"] == [str(tmp_path / "outputs")] and options["max_file_size"] == 3 * 2**20


STUDY_PLAN = """
[study]
name = "tiny"
seed = 5
participants = 2

[output]
fps = 20
width = 192
height = 192
duration = 1.0
crf = 23

[[subjects]]
name = "ada"
portrait = "{portrait}"
consent = "consent.txt"

[[drivers]]
name = "talk"
path = "{driver}"

[[real]]
name = "control"
path = "{driver}"

[conditions]
face = "all"
"""


def test_study_check_run_and_gallery_in_the_browser(server: dict, page,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("study")
    (folder / "consent.txt").write_text("I agree to synthetic videos of me for perception studies, disclosed as "
                                        "AI-generated.\n")
    plan = folder / "plan.toml"
    plan.write_text(STUDY_PLAN.format(portrait=EXAMPLES / "portrait.png", driver=EXAMPLES / "driver.mp4"))
    bad = folder / "bad.toml"
    bad.write_text(STUDY_PLAN.format(portrait=folder / "missing.png", driver=EXAMPLES / "driver.mp4"))

    page.goto(server["url"])
    page.get_by_role("tab", name="Study").click()
    field = page.locator("#study-plan textarea, #study-plan input").first
    field.fill(str(bad))
    _clear(page, "study-status")
    page.locator("#study-check").click()
    shown = _status(page, "study-status", "missing.png")
    assert shown.startswith("error:") and "problem" in shown

    field.fill(str(plan))
    _clear(page, "study-status")
    page.locator("#study-check").click()
    _status(page, "study-status", "ok: 2 clips")
    _clear(page, "study-status")
    page.locator("#study-run").click()
    _status(page, "study-status", "2 clips made", timeout=400_000)
    href = page.locator("#study-gallery-link").get_attribute("href")
    page.screenshot(path=str(folder / "study.png"), full_page=True)
    code, body = _get(server["url"] + href)
    assert code == 200 and body.count(b'<section class="clip') == 2
    assert (server["work"] / "outputs" / "studies" / "tiny" / "key.csv").exists()
    page.goto(server["url"] + href)  # the gallery, as the link opens it
    page.locator("section.clip").first.wait_for()
    page.screenshot(path=str(folder / "study-gallery.png"), full_page=True)
