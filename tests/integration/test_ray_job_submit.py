"""`ray job submit` (the real CLI) against a real Ray head with the jobs API, into the local S3 server:
one submitted job runs jobs/corpus.py, jobs/synth.py and jobs/train.py; their outputs must be in S3.

The head is this test's alone: its own ports, temp dir and session (process group), and the S3
settings reach the job only through --runtime-env-json (the head's environment has none). It is
stopped the way infra/local/stop.sh stops one, a SIGTERM to `ray start --block`, never with
`ray stop` (which stops every Ray process on the machine), and the test checks that no process of
that head is left afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deblur import storage
from deblur.checkpoint import load_checkpoint
from deblur.local_s3 import LocalS3Server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
BUCKET = "s3://rayjob-e2e"
# Variables that would point the head at an S3 server or another Ray: the job must get its S3
# settings from the runtime env alone, and the CLI must talk to this head alone.
_FOREIGN = ("AWS_", "DEBLUR_S3_", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    return ports


def _free_range(size: int, avoid: list[int]) -> int:
    """The first port of ``size`` consecutive bindable ports below the kernel's ephemeral range."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - size)
        span = range(base, base + size)
        if not set(span) & set(avoid) and all(_bindable(p) for p in span):
            return base
    raise RuntimeError(f"no {size} consecutive free ports")


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, start time, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), fields[19], fields[0])
    return table


def _tree(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of ``root`` and all its live descendants: the start time tells a reused pid."""
    table = _proc_table()
    found, queue = set(), [root]
    while queue:
        pid = queue.pop()
        if pid in table:
            found.add((pid, table[pid][1]))
            queue += [child for child, (ppid, _, _) in table.items() if ppid == pid]
    return found


def _alive(processes: set[tuple[int, str]], temp_dir: str) -> set[tuple[int, str]]:
    """Those of ``processes`` still running (zombies do not count), plus any process whose command
    line names this head's temp dir (only this head's processes can)."""
    table = _proc_table()
    alive = {
        (pid, start) for pid, start in processes if pid in table and table[pid][1] == start and table[pid][2] != "Z"
    }
    for pid, (_, start, state) in table.items():
        with contextlib.suppress(OSError):
            if state != "Z" and temp_dir.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                alive.add((pid, start))
    return alive


@dataclass
class Head:
    address: str
    env: dict[str, str]
    temp_dir: str
    log: Path
    leftovers: set[tuple[int, str]] = field(default_factory=set)


@contextlib.contextmanager
def ray_head(*, num_cpus: int = 2) -> Iterator[Head]:
    """`ray start --head --block` in its own session, on ports and a temp dir of its own."""
    # Short: Ray's Unix socket paths live under it and may not exceed ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="rjs-", dir="/tmp")
    ports = _free_ports(9)
    gcs, dashboard, client, node_manager, object_manager, agent_http, agent_grpc, runtime_env, metrics = ports
    workers = _free_range(100, ports)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update(
        # Jobs' `python` must be this interpreter (it has the project installed).
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # A throwaway head on loopback: no token (NOTES: a token file makes `ray start` enable it).
        RAY_AUTH_MODE="disabled",
        # On SIGTERM, tear down at once instead of draining for Serve (30 s by default).
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
    )
    command = [
        str(RAY), "start", "--head", "--block", "--disable-usage-stats", f"--num-cpus={num_cpus}",
        "--object-store-memory=200000000", f"--temp-dir={temp_dir}", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}", f"--min-worker-port={workers}", f"--max-worker-port={workers + 99}",
    ]  # fmt: skip
    log = Path(temp_dir) / "head.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = Head(address=f"http://127.0.0.1:{dashboard}", env=env, temp_dir=temp_dir, log=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"ray start exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{head.address}/api/version", timeout=2):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the jobs API did not answer within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield head
    finally:
        head.leftovers = _stop(process, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes], temp_dir: str) -> set[tuple[int, str]]:
    """SIGTERM to `ray start --block`, which stops the processes it started; returns what was left
    after 40 s (then killed, so that nothing of this head outlives the test)."""
    started = _tree(process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while (left := _alive(started, temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid, _ in left:  # checked a moment ago by pid and start time: ours
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)
    return left


@pytest.mark.timeout(420)
def test_corpus_synth_train_job_through_ray_job_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalS3Server() as s3:
        for key, value in s3.environment().items():
            monkeypatch.setenv(key, value)  # for this process's checks only; the head never sees them
        storage.ensure_bucket(BUCKET)
        steps = [
            ["python", "jobs/corpus.py", "--out", f"{BUCKET}/raw", "--videos", "2", "--seconds", "0.4",
             "--set", "width=64", "--set", "height=48", "-q"],
            ["python", "jobs/synth.py", f"{BUCKET}/raw", f"{BUCKET}/data", "--cpus-per-task", "0.5",
             "--set", "scale=1", "--set", "taus=[7]", "--set", "clip_frames=8", "--set", "window_frames=8",
             "--set", "min_window_frames=5"],
            ["python", "jobs/train.py", f"{BUCKET}/data", "--storage", f"{BUCKET}/runs", "--name", "smoke",
             "--preset", "tiny", "--set", "cpus_per_worker=0.5"],
        ]  # fmt: skip
        # `ray job submit` shell-quotes each word of the entrypoint: a chain of commands is one
        # `bash -c` script.
        script = " && ".join(shlex.join(step) for step in steps)
        runtime_env = {"env_vars": s3.environment()}

        with ray_head() as head:
            submit = [
                str(RAY), "job", "submit", "--address", head.address, "--working-dir", str(REPO),
                "--runtime-env-json", json.dumps(runtime_env), "--log-style", "record",
                "--", "bash", "-c", script,
            ]  # fmt: skip
            try:
                result = subprocess.run(
                    submit, env=head.env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
                )
            except subprocess.TimeoutExpired as error:
                output = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout
                pytest.fail(f"the job did not finish within 300 s:\n{(output or '')[-4000:]}")
            assert result.returncode == 0, f"job failed:\n{(result.stdout + result.stderr)[-6000:]}"
            assert "run smoke: checkpoint s3://" in result.stdout, result.stdout[-3000:]

        assert not head.leftovers, f"processes of the test's Ray head outlived it: {sorted(head.leftovers)}"

        raw = storage.list_files(f"{BUCKET}/raw", patterns=storage.VIDEO_PATTERNS)
        assert len(raw) == 2
        manifest = json.loads(storage.read_bytes(f"{BUCKET}/data/manifest.json"))
        assert manifest["summary"]["ok"] == 2 and manifest["summary"]["pairs_train"] > 0, manifest["summary"]
        models = storage.list_files(f"{BUCKET}/runs/smoke", patterns=("model.safetensors",))
        assert models, f"no model.safetensors under {BUCKET}/runs/smoke"
        loaded = load_checkpoint(models[-1])
        assert loaded.provenance["step"] > 0
