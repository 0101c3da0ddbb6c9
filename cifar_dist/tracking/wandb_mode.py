"""Deciding whether a W&B run is online, offline or off (`tracking.mode=auto`), on the main process
only, before the run starts: it may touch the network (one bounded TCP probe).

    from cifar_dist.tracking.wandb_mode import resolve_mode
    resolve_mode("auto")   # ('offline', 'no W&B API key found; ...') on a machine without a key
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0  # how long `auto` waits for a TCP connection to the W&B server
_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def _has_credentials(base_url: str) -> bool:
    """The credential sources wandb documents, read without a network call: WANDB_API_KEY,
    WANDB_IDENTITY_TOKEN_FILE, a .netrc entry for the server, an api_key in wandb's settings file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import configparser
    import netrc

    host = urlparse(base_url).hostname or ""
    for path in [os.environ.get("NETRC"), "~/.netrc", "~/_netrc"]:
        if path and Path(path).expanduser().is_file():
            try:
                if netrc.netrc(Path(path).expanduser()).authenticators(host):
                    return True
            except (netrc.NetrcParseError, OSError):
                pass
    settings = Path(os.environ.get("WANDB_CONFIG_DIR", "~/.config/wandb")).expanduser() / "settings"
    parser = configparser.ConfigParser()
    try:
        parser.read(settings)
        return bool(parser.get("default", "api_key", fallback=""))
    except configparser.Error:
        return False


def _reachable(base_url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the server, DNS included, bounded by `timeout` (getaddrinfo has no
    timeout of its own, so it runs in a daemon thread)."""
    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    ok = []

    def probe():
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            ok.append(True)
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def resolve_mode(mode: str) -> tuple[str, str]:
    """-> (online|offline|disabled, why). An explicit tracking.mode wins; `auto` honours
    WANDB_MODE / WANDB_DISABLED, then goes online only with credentials and a reachable server."""
    if mode != "auto":
        return mode, f"tracking.mode={mode}"
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled", "WANDB_DISABLED is set"
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in _ENV_MODES:
        return _ENV_MODES[env_mode], f"WANDB_MODE={env_mode}"
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not _has_credentials(base_url):
        return "offline", "no W&B API key found; `wandb login` or WANDB_API_KEY makes runs online"
    if not _reachable(base_url):
        return "offline", f"W&B server {urlparse(base_url).hostname} is unreachable"
    return "online", "API key found and server reachable"
