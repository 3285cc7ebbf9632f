"""Start the web UI safely: loopback by default, a password when it is not, no share link,
uploads limited, and no file served from outside the work folder."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from reenact.errors import ReenactError
from reenact.ui.config import UIConfig

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; False for every other name or address (0.0.0.0 included)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """'USER:PASS' -> (user, password); both must be non-empty (the password may contain ':')."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ReenactError("--auth must be USER:PASS, both non-empty")
    return user, password


def check_access(host: str, auth: tuple[str, str] | None) -> None:
    """Refuse to listen beyond this machine without a password."""
    if not is_loopback(host) and auth is None:
        raise ReenactError(f"--host {host} is reachable from other machines: give --auth USER:PASS too "
                           "(or leave --host out to listen on 127.0.0.1 only)")


def _isolate_gradio(work_dir: Path) -> None:
    """Point every folder Gradio serves files from into the work folder; set before gradio is imported."""
    os.environ["GRADIO_TEMP_DIR"] = str(work_dir / "gradio")  # uploads and copies of what the page shows
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(work_dir / "gradio" / "examples")  # default: ./.gradio in the cwd
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # offline, and nothing reported anywhere
    for name in ("GRADIO_ALLOWED_PATHS", "GRADIO_SHARE", "GRADIO_SERVER_NAME", "GRADIO_ROOT_PATH"):
        os.environ.pop(name, None)


def serve(config: UIConfig, block: bool = True):
    """Check the settings, build the app and serve it; returns (app, local_url) when `block` is False."""
    check_access(config.host, config.auth)
    work_dir = config.work_dir.expanduser().resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    config.work_dir = work_dir
    _isolate_gradio(work_dir)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ReenactError("the web UI needs gradio: pip install 'reenact[ui]' (or `make setup`)") from None
    from reenact.ui.app import build_app, launch_options

    demo = build_app(config)
    _, local_url, _ = demo.launch(**launch_options(config), prevent_thread_lock=not block)
    return demo, local_url
