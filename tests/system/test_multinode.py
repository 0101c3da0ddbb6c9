"""Multi-node training, for real: two hosts (network namespaces joined by a veth pair, see netns.py)
each run their own launcher, and the two form one 2-process gloo job over the veth addresses.

    python -m pytest tests/system/test_multinode.py     # as root (the tests run as root in CI)

Each host also gets its own disk for the runs folder (the same path, a different directory behind
it), as two machines without a shared filesystem have: so the files on host 1's disk are exactly
what host 1 wrote, and "host 1 wrote no best.pt" is something a test can see.

The reference is a single-host 2-process run (cpu_ddp.yaml) with the same seed: same world size,
same shards, same all-reduce, so the weights must agree to float tolerance.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import CPU_DDP, REPO, SMALL, accelerate_cmd, base_env, read_metrics, require, train_cmd
from netns import NamespaceError, two_hosts

pytestmark = pytest.mark.slow  # every test here starts training processes

MULTI_NODE = REPO / "accelerate_configs" / "multi_node.yaml"
LAUNCH_SH = REPO / "slurm" / "launch.sh"
TRAIN = ["--train.epochs=2", "--run.progress=false", "--tracking.backend=none", "--train.dist_timeout_s=120"]
# A hang guard only (the runs take ~20-45 s here); a run that reaches it fails the test.
GUARD_S = 300


@pytest.fixture
def hosts():
    try:
        with two_hosts() as pair:
            yield pair
    except NamespaceError as e:
        require(False, f"cannot make network namespaces for the two test hosts: {e}")


def require_scontrol() -> None:
    require(shutil.which("scontrol") is not None, "slurm-wlm's scontrol is not installed (apt-get install slurm-wlm)")


def host_env(host, **extra) -> dict:
    # `accelerate` (what launch.sh execs) from this interpreter's environment; gloo on the veth.
    return base_env(
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", GLOO_SOCKET_IFNAME=host.ifname, **extra
    )


def run_hosts(jobs, tmp_path: Path, tag: str) -> list[tuple[int | None, str]]:
    """Start every (host, argv, env, disk) at once, wait for all; return (exit code, output) each,
    the code None for a host still running at the guard (then killed)."""
    procs = []
    try:
        for i, (host, argv, env, disk) in enumerate(jobs):
            log = open(tmp_path / f"{tag}-{i}.log", "w+")  # noqa: SIM115 (outlives the block: the child writes it)
            procs.append(
                (
                    subprocess.Popen(
                        host.cmd(argv, disk=disk),
                        cwd=REPO,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ),
                    log,
                )
            )
        deadline = time.monotonic() + GUARD_S
        codes = []
        for p, _ in procs:  # every host's outcome, so a hang on one is reported with the other's cause
            try:
                codes.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                codes.append(None)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    out = []
    for code, (_, log) in zip(codes, procs):
        log.seek(0)
        out.append((code, log.read()))
        log.close()
    return out


def check(results) -> None:
    failed = [(i, code, text) for i, (code, text) in enumerate(results) if code != 0]
    assert not failed, "\n".join(
        f"host {i} {f'still running after {GUARD_S} s (killed)' if code is None else f'exited {code}'}:\n{text[-4000:]}"
        for i, code, text in failed
    )


def disks(tmp_path: Path) -> tuple[Path, list[Path]]:
    """The runs folder both hosts see, and the two directories behind it (host 0's, host 1's)."""
    runs = tmp_path / "runs"
    own = [tmp_path / "disk0", tmp_path / "disk1"]
    for d in (runs, *own):
        d.mkdir()
    return runs, own


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> Path:
    """The single-host 2-process run with the same seed (inside a fresh host, so its port is private)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    try:
        with two_hosts() as (h0, _):
            argv = train_cmd(
                *SMALL, f"--data.root={data_root}", *TRAIN, f"--run.dir={run_dir}", launch=accelerate_cmd(CPU_DDP)
            )
            check(run_hosts([(h0, argv, host_env(h0), None)], run_dir.parent, "reference"))
    except NamespaceError as e:
        require(False, f"cannot make network namespaces for the two test hosts: {e}")
    return run_dir


def rows(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics.jsonl")


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    from safetensors.torch import load_file

    for name, load in (
        ("best.pt", lambda p: torch.load(p, weights_only=True)["model_state"]),
        ("last/model.safetensors", load_file),
    ):
        got, want = load(run_dir / name), load(reference / name)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(
                got[k], want[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k} differs from the 1-host run"
            )


def assert_one_job_written_by_host0(run_name: str, own: list[Path], reference: Path, outputs: list[str]) -> None:
    assert_one_job_written_by(0, run_name, own, reference, outputs)


def assert_one_job_written_by(writer: int, run_name: str, own: list[Path], reference: Path, outputs: list[str]) -> None:
    """The result files are on host `writer`'s disk only, and they are the 1-host run's."""
    head, other = own[writer] / run_name, own[1 - writer] / run_name
    r = rows(head)
    assert [x["epoch"] for x in r] == [1, 2]
    assert all(x["world_size"] == 2 for x in r), r
    assert [x["train_samples"] for x in r] == [x["train_samples"] for x in rows(reference)]
    assert sorted(p.name for p in head.iterdir() if p.suffix == ".pt") == ["best.pt"]
    assert torch.load(head / "best.pt", weights_only=True)["world_size"] == 2
    # The other host wrote no result files: they exist only on the writer's disk (the other may hold
    # its own rank's RNG file from save_state, which is per rank by design).
    written_by_1 = {p.name for p in other.rglob("*")} if other.exists() else set()
    assert not written_by_1 & {"best.pt", "metrics.jsonl", "test_metrics.json", "config.json", "model.safetensors"}, (
        written_by_1
    )
    # Both hosts' processes were in the one job: each printed the world size of 2.
    for text in outputs:
        assert "world size 2 on cpu" in text, text[-3000:]
    assert_same_weights(head, reference)


def test_two_hosts_train_one_job_with_multi_node_yaml(hosts, reference, data_root, tmp_path):
    """Issue test 2: `accelerate launch --config_file multi_node.yaml` once per host, rank 0 and 1."""
    runs, own = disks(tmp_path)
    h0, h1 = hosts
    jobs = []
    for rank, h in enumerate(hosts):
        argv = [
            *accelerate_cmd(MULTI_NODE),
            "--machine_rank",
            str(rank),
            "--num_processes",
            "2",
            "--main_process_ip",
            h0.address,
            "--main_process_port",
            "29511",
            *train_cmd(*SMALL, f"--data.root={data_root}", *TRAIN, f"--run.dir={runs / 'job'}")[1:],
        ]
        jobs.append((h, argv, host_env(h, ACCELERATE_USE_CPU=1), (own[rank], runs)))
    results = run_hosts(jobs, tmp_path, "yaml")
    check(results)
    assert not any(runs.iterdir()), "a host wrote through to the shared path instead of its own disk"
    assert_one_job_written_by_host0("job", own, reference, [t for _, t in results])


def slurm_env(host, rank: int, nodelist: str, slurm_conf: Path, **extra) -> dict:
    """What SLURM sets in each node's task for `srun --nodes=2 --ntasks-per-node=1`."""
    return host_env(
        host,
        SLURM_NNODES=2,
        SLURM_NTASKS=2,
        SLURM_NODEID=rank,
        SLURM_PROCID=rank,
        SLURM_LOCALID=0,
        SLURM_JOB_ID=4242,
        SLURM_JOB_NODELIST=nodelist,
        SLURM_CONF=slurm_conf,
        USE_CPU=1,
        **{"SLURMD_NODENAME": host.hostname, **extra},
    )


def slurm_conf(tmp_path: Path) -> Path:
    # The two lines scontrol needs to expand a host list offline (no daemon is contacted).
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=netns\nSlurmctldHost=localhost\n")
    return conf


def nodelist(hosts) -> str:
    """SLURM's compressed form of the two hostnames, e.g. cdist123x1-[0-1]."""
    stem = hosts[0].hostname.rsplit("-", 1)[0]
    assert [h.hostname for h in hosts] == [f"{stem}-0", f"{stem}-1"]
    return f"{stem}-[0-1]"


def test_two_hosts_through_slurm_launch_script(hosts, reference, data_root, tmp_path):
    """Issue test 3: slurm/launch.sh on each host, fed only what SLURM sets. The head is found the
    cluster's way: `scontrol show hostnames $SLURM_JOB_NODELIST | head -1` gives host 0's *name*,
    resolved through the hosts file of each namespace (MAIN_PROCESS_IP is not set: setting it would
    skip the very logic under test); the port comes from SLURM_JOB_ID (20000 + 4242)."""
    require_scontrol()
    runs, own = disks(tmp_path)
    conf, nodes = slurm_conf(tmp_path), nodelist(hosts)
    train = train_cmd(*SMALL, f"--data.root={data_root}", *TRAIN, f"--run.dir={runs / 'job'}")[1:]
    jobs = [
        (h, ["bash", LAUNCH_SH, *train], slurm_env(h, rank, nodes, conf, RDZV_TIMEOUT=60), (own[rank], runs))
        for rank, h in enumerate(hosts)
    ]
    results = run_hosts(jobs, tmp_path, "slurm")
    check(results)
    h0 = hosts[0]
    for rank, (h, (_, text)) in enumerate(zip(hosts, results)):
        # launch.sh's own line: each node found its rank, and both found host 0 by name and the port
        assert f"launch.sh: host {h.hostname} machine_rank={rank}/2 processes=2 head={h0.hostname}:24242" in text, text[
            -3000:
        ]
    assert_one_job_written_by_host0("job", own, reference, [t for _, t in results])


@pytest.mark.parametrize("rdzv", ["static", "c10d"])
def test_which_node_writes_when_node_names_are_not_hostnames(rdzv, reference, data_root, tmp_path):
    """slurm/launch.sh on each host with SLURM node names that are not the hostnames, ordered so
    that the head (first in SLURM_JOB_NODELIST, SLURM_NODEID 0) is the host whose hostname sorts
    LAST. static: machine rank = SLURM_NODEID, so the head writes. c10d (slurm/multinode.sbatch):
    torchrun gives node rank 0 to the agent whose address (socket.getfqdn(), the hostname) sorts
    first, so the other host writes: what docs/multinode.md says."""
    require_scontrol()
    names = ("nodeb", "nodea")  # host 0's and host 1's SLURM node names; the head is nodea = host 1
    try:
        with two_hosts(aliases=names) as hosts:
            assert sorted(h.hostname for h in hosts)[0] == hosts[0].hostname  # host 0's hostname sorts first
            runs, own = disks(tmp_path)
            conf = slurm_conf(tmp_path)
            train = train_cmd(*SMALL, f"--data.root={data_root}", *TRAIN, f"--run.dir={runs / 'job'}")[1:]
            node_id = {0: 1, 1: 0}  # SLURM numbers the nodes in node-list order: nodea (host 1) is 0
            jobs = [
                (
                    h,
                    ["bash", LAUNCH_SH, *train],
                    slurm_env(
                        h,
                        node_id[i],
                        "nodea,nodeb",
                        conf,
                        SLURMD_NODENAME=names[i],
                        RDZV_BACKEND=rdzv,
                        RDZV_TIMEOUT=60,
                    ),
                    (own[i], runs),
                )
                for i, h in enumerate(hosts)
            ]
            results = run_hosts(jobs, tmp_path, rdzv)
            check(results)
    except NamespaceError as e:
        require(False, f"cannot make network namespaces for the two test hosts: {e}")
    for i, (h, (_, text)) in enumerate(zip(hosts, results)):
        assert f"launch.sh: host {h.hostname} machine_rank={node_id[i]}/2 processes=2 head=nodea:24242" in text, text[
            -3000:
        ]
    writer = 1 if rdzv == "static" else 0  # the head, or the host whose hostname sorts first
    assert_one_job_written_by(writer, "job", own, reference, [t for _, t in results])


def test_unreachable_head_fails_within_the_rendezvous_timeout(hosts, data_root, tmp_path):
    """Host 1 starts, host 0's cable is unplugged: a clear error naming the head, not a hang."""
    require_scontrol()  # launch.sh finds the head's name with it
    h0, h1 = hosts
    h0.set_link(False)
    conf = slurm_conf(tmp_path)
    run_dir = tmp_path / "run"
    argv = ["bash", LAUNCH_SH, *train_cmd(*SMALL, f"--data.root={data_root}", *TRAIN, f"--run.dir={run_dir}")[1:]]
    [(code, text)] = run_hosts(
        [(h1, argv, slurm_env(h1, 1, nodelist(hosts), conf, RDZV_TIMEOUT=10), None)], tmp_path, "unreachable"
    )
    assert code not in (0, None), text[-3000:]  # None: still running at the guard, i.e. a hang
    # torch's words: "TCP client failed to connect/validate to host <head>:24242 - timed out (try=1,
    # timeout=10000ms)", then "DistNetworkError: ... failed to connect to any network address of (<head>, 24242)"
    assert f"{h0.hostname}:24242 - timed out" in text, text[-3000:]
    assert (
        f"DistNetworkError: The client socket has failed to connect to any network address of ({h0.hostname}, 24242)"
        in text
    )
    assert not run_dir.exists()


def test_hosts_disagreeing_on_world_size_stop_with_one_line(hosts, data_root, tmp_path):
    """Host 0 launches 2 processes in total, host 1 asks for 4: torchrun would form a 3-process job
    (measured: it trained, then hung at exit); the toolkit stops both hosts at the start."""
    h0, h1 = hosts
    run_dir = tmp_path / "run"
    jobs = []
    for rank, (h, total) in enumerate(zip(hosts, (2, 4))):
        argv = [
            *accelerate_cmd(MULTI_NODE),
            "--machine_rank",
            str(rank),
            "--num_processes",
            str(total),
            "--main_process_ip",
            h0.address,
            "--main_process_port",
            "29512",
            "--mixed_precision",
            "no",
            "--rdzv_conf",
            "timeout=60",
            *train_cmd(*SMALL, f"--data.root={data_root}", *TRAIN, f"--run.dir={run_dir}")[1:],
        ]
        jobs.append((h, argv, host_env(h, ACCELERATE_USE_CPU=1), None))
    results = run_hosts(jobs, tmp_path, "disagree")
    assert all(code not in (0, None) for code, _ in results), [(c, t[-2000:]) for c, t in results]
    # one line in each machine's log (printed by its first process), so both logs say why
    for _, text in results:
        errors = [s for s in text.splitlines() if s.startswith("error: ")]
        assert len(errors) == 1 and "the machines disagree on the world size" in errors[0], errors
        assert "but 3 processes joined the job" in errors[0]
    assert not run_dir.exists(), "a failed start must not create the run folder"


def test_test_hosts_are_isolated_and_removed_also_on_failure():
    """The helper itself: only the pair's subnet is routable inside, and a failing body still
    leaves no namespace, hosts file or process behind."""
    from netns import NETNS_ETC

    try:
        with two_hosts() as (h0, h1):
            for h in (h0, h1):
                routes = subprocess.run(["ip", "-n", h.hostname, "route"], capture_output=True, text=True).stdout
                assert routes.split()[:1] == ["10.231.0.0/24"] and "default" not in routes, routes
            sleeper = subprocess.Popen(h1.cmd(["sleep", "600"]))
            raise KeyError("a test failed here")
    except NamespaceError as e:
        require(False, f"cannot make network namespaces for the two test hosts: {e}")
    except KeyError:
        pass
    assert sleeper.wait(timeout=30) != 0  # killed by the helper, not finished
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for h in (h0, h1):
        assert h.hostname not in listed and not (NETNS_ETC / h.hostname).exists()
