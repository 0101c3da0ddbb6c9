"""Two test "hosts" on one machine: Linux network namespaces joined by a veth pair, each with its
own private address, its own loopback and a hosts file naming both (what two cluster nodes have).

    with two_hosts() as (h0, h1):            # needs root and iproute2 (`ip`)
        subprocess.run(h1.cmd(["python", "-c", "..."]))   # runs "on" host 1: its network, its hostname
        h0.address, h0.hostname, h0.ifname   # 10.231.0.1, cdist<pid>x1-0, veth0

Traffic stays between these two namespaces: the pair's addresses (10.231.0.0/24) exist nowhere
else, no route leads out, and the machine's own interfaces are not in either namespace.

The interface is called `veth0` on both hosts (created straight inside each namespace, so the two
names never meet), like `eth0`/`ib0` on real nodes: GLOO_SOCKET_IFNAME=veth0 is right on both.

Each host's hostname resolves through `/etc/netns/<name>/hosts`, which `ip netns exec` bind-mounts
over /etc/hosts in a private mount namespace (iproute2's documented convention), so a launcher that
turns SLURM's node list into a head *hostname* resolves it as it would on a cluster.

Everything is removed on exit, also when the body raises: processes still inside the namespaces
(only ours: nothing else can enter them) are killed, then the namespaces and their hosts files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.231.0"
PREFIX = "cdist"  # namespace names (= hostnames): cdist<creator pid>x<pair number>-<0 or 1>
_pairs = 0
NETNS_ETC = Path("/etc/netns")


class NamespaceError(RuntimeError):
    """The namespaces could not be made (not root, no iproute2, no CAP_SYS_ADMIN in a container)."""


@dataclass(frozen=True)
class Host:
    hostname: str  # also the network namespace's name
    address: str
    ifname: str = "veth0"

    def cmd(self, argv: list, disk: tuple[Path, Path] | None = None) -> list[str]:
        """`argv` run on this host: in its network namespace, under its own hostname (a private UTS
        namespace), with the caller's environment. `disk=(src, dst)` gives the host its own disk at
        `dst`: `src` is bind-mounted there inside the private mount namespace that `ip netns exec`
        makes (mounts do not propagate out), so what one host writes under `dst` the other cannot see."""
        script, extra = 'hostname "$0" && exec "$@"', []
        if disk:
            script, extra = 'hostname "$0" && mount --bind "$1" "$2" && shift 2 && exec "$@"', [*map(str, disk)]
        return [
            "ip",
            "netns",
            "exec",
            self.hostname,
            "unshare",
            "--uts",
            "sh",
            "-c",
            script,
            self.hostname,
            *extra,
            *map(str, argv),
        ]

    def pids(self) -> list[int]:
        p = subprocess.run(["ip", "netns", "pids", self.hostname], capture_output=True, text=True)
        return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []

    def set_link(self, up: bool) -> None:
        """Plug or unplug this host's cable (the veth end inside its namespace)."""
        _ip("-n", self.hostname, "link", "set", self.ifname, "up" if up else "down")


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise NamespaceError(f"`ip {' '.join(args)}` failed: {p.stderr.strip() or p.returncode}")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they probably can (creation may still fail)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (the tests run as root in CI)"
    return None


def _remove(hosts: list[Host]) -> None:
    """Kill what still runs inside, then delete the namespaces (which destroys the veth pair)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for h in hosts for pid in h.pids()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline and any(h.pids() for h in hosts):
            time.sleep(0.1)
    for h in hosts:
        subprocess.run(["ip", "netns", "del", h.hostname], capture_output=True)
        shutil.rmtree(NETNS_ETC / h.hostname, ignore_errors=True)


def _remove_stale() -> None:
    """Namespaces a killed test session (SIGKILL skips `finally`) left behind: ours by name, and
    their creator is gone."""
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in p.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX) or "x" not in name:
            continue
        owner = name[len(PREFIX) :].split("x")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _remove([Host(name, "")])


@contextmanager
def two_hosts(aliases: tuple[str, str] | None = None):
    """Yield (host0, host1): 10.231.0.1 and 10.231.0.2 on `veth0`, joined by one virtual cable.
    `aliases` gives each host a second name in both hosts files (a cluster's node name that is not
    the machine's hostname); the hostname stays first on the line, so it is the canonical name."""
    reason = unavailable_reason()
    if reason:
        raise NamespaceError(reason)
    global _pairs
    _remove_stale()
    _pairs += 1
    hosts = [Host(f"{PREFIX}{os.getpid()}x{_pairs}-{i}", f"{SUBNET}.{i + 1}") for i in range(2)]
    try:
        for h in hosts:
            _ip("netns", "add", h.hostname)
        a, b = hosts
        # Both ends are born inside their namespaces: nothing appears in the machine's own namespace.
        _ip("link", "add", a.ifname, "netns", a.hostname, "type", "veth", "peer", "name", b.ifname, "netns", b.hostname)
        extra = [f" {a}" for a in aliases] if aliases else ["", ""]
        hosts_file = "127.0.0.1 localhost\n" + "".join(f"{h.address} {h.hostname}{x}\n" for h, x in zip(hosts, extra))
        for h in hosts:
            _ip("-n", h.hostname, "addr", "add", f"{h.address}/24", "dev", h.ifname)
            _ip("-n", h.hostname, "link", "set", "lo", "up")
            _ip("-n", h.hostname, "link", "set", h.ifname, "up")
            (NETNS_ETC / h.hostname).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / h.hostname / "hosts").write_text(hosts_file)
        yield a, b
    finally:
        _remove(hosts)
