"""The local stack of infra/local (the real start.sh, status.sh and stop.sh) used as
docs/deployment.md section 1 says: `ray job submit` (the real CLI) of every stage but the sweep
with the documented runtime env, outputs checked in the stack's S3 server; and serve/config.yaml
deployed with the real `serve deploy`, called over HTTP and compared with the offline engine.

The stack is this module's alone: its own ports, state dir (Ray's temp dir under it) and auth
token. stop.sh stops it by its pid files, never with `ray stop` (which stops every Ray process on
the machine), and the fixture checks that no process of the stack is left afterwards.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from deblur import storage
from deblur.checkpoint import load_checkpoint, load_model, save_checkpoint
from deblur.client import DeblurClient, EndpointError
from deblur.engine import deblur_frames
from deblur.local_s3 import find_free_port
from deblur.video import read_frames
from media import pattern_frame
from tiny import tiny_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "infra" / "local"
DOCS = REPO / "docs" / "deployment.md"
SERVE_CONFIG = REPO / "serve" / "config.yaml"
RAY = Path(sys.executable).with_name("ray")
SERVE = Path(sys.executable).with_name("serve")
BUCKET = "s3://rayjob-e2e"
SERVE_BUCKET = "s3://serve-deploy"
API_KEY = "deploy-test-key-0123456789"
# Variables that would point the stack or the CLIs at another S3 server, another Ray or another
# stack's settings: everything must come from start.sh and its env.sh.
_FOREIGN = (
    "AWS_", "DEBLUR_", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_DASHBOARD_ADDRESS", "RAY_AUTH_", "RAY_GRACEFUL",
)  # fmt: skip


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
class Stack:
    """The local stack as infra/local/start.sh started it, on this test's own ports and state dir."""

    state: Path
    settings: dict[str, str]  # what start.sh, status.sh and stop.sh run with
    env: dict[str, str]  # a shell after `source env.sh`: what the documented commands run with
    exports: dict[str, str]  # the lines of env.sh
    ray_pid: int
    s3_pid: int

    @property
    def s3(self) -> dict[str, str]:
        return {k: v for k, v in self.exports.items() if k.startswith(("AWS_", "DEBLUR_S3_"))}


def run_script(name: str, env: dict[str, str], timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """infra/local/NAME, the file users run."""
    return subprocess.run(
        [str(LOCAL / name)], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def read_exports(path: Path) -> dict[str, str]:
    """The ``export KEY=VALUE`` lines of an env.sh, unquoted as bash would."""
    exports = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = shlex.split(line[len("export ") :])[0].partition("=")
            exports[key] = value
    return exports


def run_cli(command: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        output = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout
        pytest.fail(f"`{shlex.join(command)}` did not finish within {timeout:g} s:\n{(output or '')[-4000:]}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """infra/local/start.sh on ports and a state dir of this module's own, with token auth; at the
    end infra/local/stop.sh, which must leave no process of the stack behind."""
    # Short: Ray's Unix socket paths live under it and may not exceed ~107 characters.
    state = Path(tempfile.mkdtemp(prefix="rjs-", dir="/tmp"))
    ports = _free_ports(10)
    gcs, dashboard, s3, client, node_manager, object_manager, agent_http, agent_grpc, runtime_env, metrics = ports
    workers = _free_range(100, ports)
    base = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    base.update(
        # Jobs' `python` must be this interpreter (it has the project installed).
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
        # start.sh's default, with a token of the test's own: the token file in ~/.ray stays unread
        # and no new one is written there (`ray get-auth-token --generate` finds this one).
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
    )
    start_args = [
        "--object-store-memory=200000000", f"--ray-client-server-port={client}",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
        f"--min-worker-port={workers}", f"--max-worker-port={workers + 99}",
    ]  # fmt: skip
    settings = {
        **base,
        "DEBLUR_LOCAL_STATE": str(state),
        "DEBLUR_NUM_CPUS": "2",
        "DEBLUR_RAY_PORT": str(gcs),
        "DEBLUR_DASHBOARD_PORT": str(dashboard),
        "DEBLUR_S3_PORT": str(s3),
        # Every other port of its own too: another Ray on this machine may hold the defaults.
        "DEBLUR_RAY_START_ARGS": " ".join(start_args),
        # What the endpoint's replicas read (api_key_env in serve/config.yaml): set on the nodes.
        "DEBLUR_API_KEY": API_KEY,
    }
    started = run_script("start.sh", settings)
    try:
        assert started.returncode == 0, f"start.sh failed:\n{started.stdout}\n{started.stderr}"
        exports = read_exports(state / "env.sh")
        yield Stack(
            state=state,
            settings=settings,
            env={**base, **exports},
            exports=exports,
            ray_pid=int((state / "ray.pid").read_text()),
            s3_pid=int((state / "s3.pid").read_text()),
        )
    finally:
        stopped, left = _stop(state, settings)
        after = run_script("status.sh", settings)
        shutil.rmtree(state, ignore_errors=True)
    assert stopped.returncode == 0, f"stop.sh failed:\n{stopped.stdout}\n{stopped.stderr}"
    assert "Ray head: stopped" in stopped.stdout and "local S3: stopped" in stopped.stdout, stopped.stdout
    assert not left, f"processes of the test's stack outlived stop.sh: {sorted(left)}"
    assert after.returncode == 3, after.stdout + after.stderr
    assert "Ray head: not running" in after.stdout and "local S3: not running" in after.stdout, after.stdout


def _stop(state: Path, settings: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[tuple[int, str]]]:
    """infra/local/stop.sh; returns its result and what of the stack was still alive after it (then
    killed, so that nothing of it outlives the test). Only pids from this stack's pid files, their
    descendants and processes naming its state dir are ever signalled."""
    started: set[tuple[int, str]] = set()
    for name in ("ray", "s3"):
        with contextlib.suppress(OSError, ValueError):
            started |= _tree(int((state / f"{name}.pid").read_text()))
    result = run_script("stop.sh", settings, timeout=120)
    left = _alive(started, str(state))
    for pid, _ in left:  # checked a moment ago by pid and start time: ours
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return result, left


def documented_runtime_env(env: dict[str, str]) -> str:
    """The ``RUNTIME_ENV`` of docs/deployment.md section 1, computed as a shell that sourced env.sh would."""
    (line,) = re.findall(r"^RUNTIME_ENV=\$\(.*\)$", DOCS.read_text(), re.M)
    result = run_cli(["bash", "-c", f'{line}\nprintf %s "$RUNTIME_ENV"'], env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_local_scripts_report_the_stack_and_start_is_idempotent(stack: Stack) -> None:
    status = run_script("status.sh", stack.settings)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"Ray head: running (pid {stack.ray_pid}), jobs API answering" in status.stdout, status.stdout
    assert f"local S3: running (pid {stack.s3_pid}), answering" in status.stdout, status.stdout

    again = run_script("start.sh", stack.settings)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"local S3: already running (pid {stack.s3_pid})" in again.stdout, again.stdout
    assert f"Ray head: already running (pid {stack.ray_pid})" in again.stdout, again.stdout
    assert read_exports(stack.state / "env.sh") == stack.exports

    # Token auth is on: the jobs API answers with the token and refuses a wrong one.
    listed = run_cli([str(RAY), "job", "list"], stack.env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    wrong = run_cli([str(RAY), "job", "list"], {**stack.env, "RAY_AUTH_TOKEN": "0" * 32})
    assert wrong.returncode != 0 and "auth" in (wrong.stdout + wrong.stderr).lower(), wrong.stdout + wrong.stderr


@pytest.mark.timeout(480)
def test_every_stage_through_ray_job_submit_with_the_documented_runtime_env(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in stack.s3.items():
        monkeypatch.setenv(key, value)  # for this process's checks
    storage.ensure_bucket(BUCKET)
    model = f"{BUCKET}/models/smoke.safetensors"
    steps = [
        # Which `deblur` the job imports: the documented runtime env must ship this checkout's.
        ["python", "-c", "import deblur; print('deblur imported from', deblur.__file__)"],
        ["python", "jobs/corpus.py", "--out", f"{BUCKET}/raw", "--videos", "2", "--seconds", "0.4",
         "--set", "width=64", "--set", "height=48", "-q"],
        ["python", "jobs/synth.py", f"{BUCKET}/raw", f"{BUCKET}/data", "--cpus-per-task", "0.5",
         "--set", "scale=1", "--set", "taus=[7]", "--set", "clip_frames=8", "--set", "window_frames=8",
         "--set", "min_window_frames=5"],
        ["python", "jobs/train.py", f"{BUCKET}/data", "--storage", f"{BUCKET}/runs", "--name", "smoke",
         "--preset", "tiny", "--set", "cpus_per_worker=0.5", "--export", model],
        ["python", "jobs/evaluate.py", model, f"{BUCKET}/data", "-o", f"{BUCKET}/reports/smoke", "--limit", "1",
         "--device", "cpu", "-q"],
        ["python", "jobs/deblur_archive.py", f"{BUCKET}/raw", f"{BUCKET}/deblurred", "--checkpoint", model,
         "--cpus-per-actor", "0.5", "-q"],
    ]  # fmt: skip
    # `ray job submit` shell-quotes each word of the entrypoint: a chain of commands is one
    # `bash -c` script.
    script = " && ".join(shlex.join(step) for step in steps)
    # As docs/deployment.md section 1 says, from the repository root, the address from env.sh.
    submit = [
        str(RAY), "job", "submit", "--working-dir", ".", "--runtime-env-json", documented_runtime_env(stack.env),
        "--log-style", "record", "--", "bash", "-c", script,
    ]  # fmt: skip
    result = run_cli(submit, stack.env, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"job failed:\n{output[-6000:]}"

    (imported,) = re.findall(r"deblur imported from (\S+)", result.stdout)
    assert Path(imported).is_relative_to(stack.state) and not Path(imported).is_relative_to(REPO), (
        f"the job imported {imported}, not the copy the runtime env ships (py_modules)"
    )
    raw = storage.list_files(f"{BUCKET}/raw", patterns=storage.VIDEO_PATTERNS)
    assert len(raw) == 2
    manifest = json.loads(storage.read_bytes(f"{BUCKET}/data/manifest.json"))
    assert manifest["summary"]["ok"] == 2 and manifest["summary"]["pairs_train"] > 0, manifest["summary"]
    assert "run smoke: checkpoint s3://" in result.stdout, result.stdout[-3000:]
    assert load_checkpoint(model).provenance["step"] > 0
    (report,) = json.loads(storage.read_bytes(f"{BUCKET}/reports/smoke/report.json"))["reports"]
    assert len(report["clips"]) == 1, "--limit 1"
    assert report["overall"]["frames"] > 0 and math.isfinite(report["overall"]["psnr"]), report["overall"]
    assert storage.list_files(f"{BUCKET}/reports/smoke", patterns=("report.md",))

    deblurred = storage.list_files(f"{BUCKET}/deblurred", patterns=storage.VIDEO_PATTERNS)
    keys = sorted(storage.relative_key(u, f"{BUCKET}/deblurred") for u in deblurred)
    assert keys == sorted(storage.relative_key(u, f"{BUCKET}/raw") for u in raw)
    batch = json.loads(storage.read_bytes(f"{BUCKET}/deblurred/_deblur/manifest.json"))
    assert batch["summary"] == {"ok": 2, "failed": 0}, batch["summary"]
    for key in keys:
        with tempfile.TemporaryDirectory() as tmp:
            source, out = Path(tmp) / "in.mp4", Path(tmp) / "out.mp4"
            storage.download_file(f"{BUCKET}/raw/{key}", source)
            storage.download_file(f"{BUCKET}/deblurred/{key}", out)
            assert count_frames(out) == count_frames(source) > 0, key


def count_frames(path: Path) -> int:
    return sum(1 for _ in read_frames(path))


@pytest.mark.timeout(300)
def test_serve_config_through_serve_deploy_answers_like_the_offline_engine(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    for key, value in stack.s3.items():
        monkeypatch.setenv(key, value)
    storage.ensure_bucket(SERVE_BUCKET)
    torch.manual_seed(0)
    checkpoint = f"{SERVE_BUCKET}/models/tiny.safetensors"  # read from S3 by the replica and the session
    save_checkpoint(tiny_model(), checkpoint, provenance={"purpose": "test"})

    config = yaml.safe_load(SERVE_CONFIG.read_text())
    # serve/config.yaml as it is, but for what this machine needs:
    port = find_free_port()
    # - its own HTTP port (8000 may be another Serve's), on loopback only;
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    # - a tiny model: the bundled one costs seconds per frame here, and may not be built yet.
    app["args"]["checkpoint"] = checkpoint
    deployed = tmp_path / "serve.yaml"
    deployed.write_text(yaml.safe_dump(config, sort_keys=False))
    url = f"http://127.0.0.1:{port}"

    # The address comes from env.sh (RAY_DASHBOARD_ADDRESS), as in docs/deployment.md section 1.
    result = run_cli([str(SERVE), "deploy", str(deployed)], stack.env)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        status = wait_for_serve_status(stack.env, app["name"], timeout=180)
        assert status["deployments"]["DeblurApi"]["status"] == "HEALTHY", status

        frames = [pattern_frame(i, 40, 30) for i in range(6)]
        with DeblurClient(url) as anonymous:
            assert anonymous.health() == {"status": "ok"}
            with pytest.raises(EndpointError) as refused:
                anonymous.session()
            assert refused.value.status == 401  # the key on the nodes (DEBLUR_API_KEY) is required
        with DeblurClient(url, api_key=API_KEY) as client:
            ready = client.ready()
            assert ready["model"]["source"] == checkpoint and ready["session_gpus"] == 0, ready
            session = client.session(fmt="raw")
            got: list[np.ndarray] = []
            for frame in frames:
                got += session.push(frame)
            got += session.close()
    finally:
        shutdown = run_cli([str(SERVE), "shutdown", "-y"], stack.env)
    assert shutdown.returncode == 0, shutdown.stdout + shutdown.stderr

    # The config's precision (auto: int8 where the CPU has VNNI, checked on the first frames) is
    # the offline engine's too, so the frames must match bit for bit.
    expected = list(deblur_frames(load_model(checkpoint), frames, device="cpu", precision=app["args"]["precision"]))
    assert len(got) == len(frames)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    after = run_cli([str(SERVE), "status"], stack.env)
    assert after.returncode == 0 and not (yaml.safe_load(after.stdout) or {}).get("applications"), after.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v1/health", timeout=5)


def wait_for_serve_status(env: dict[str, str], name: str, timeout: float) -> dict[str, Any]:
    """`serve status` of application ``name`` once it is RUNNING; fails at DEPLOY_FAILED or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = run_cli([str(SERVE), "status"], env)
        assert result.returncode == 0, result.stdout + result.stderr
        app = ((yaml.safe_load(result.stdout) or {}).get("applications") or {}).get(name) or {}
        if app.get("status") == "RUNNING":
            return app
        if app.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
            pytest.fail(f"application {name} is {app['status']}:\n{result.stdout}")
        if time.monotonic() > deadline:
            pytest.fail(f"application {name} not RUNNING within {timeout:g} s:\n{result.stdout}")
        time.sleep(1)
