"""Process-level helpers of the fault tests: this test session's Ray processes, a second driver.

Only processes of the Ray instance this test session started are ever looked at or killed: they
are found as children of that instance's raylet (other Ray instances on the machine, e.g. a long
training run, have their own raylet and are never touched).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def own_raylet_pid() -> int:
    """PID of the raylet of the Ray instance this process started (the ``ray_session`` fixture)."""
    import ray

    node = ray._private.worker._global_node
    if node is None:
        raise RuntimeError("this process did not start a local Ray instance")
    (raylet,) = node.all_processes["raylet"]
    return raylet.process.pid


def own_ray_processes(title_prefix: str) -> list[int]:
    """PIDs of this session's Ray worker processes whose title (``ray::Class...``) starts with the prefix."""
    raylet = own_raylet_pid()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == raylet and cmdline.startswith(title_prefix.encode()):
            found.append(int(proc.name))
    return sorted(found)


def kill(pid: int) -> None:
    """SIGKILL one of this session's Ray processes (checked again right before the kill)."""
    raylet = own_raylet_pid()
    stat = Path(f"/proc/{pid}/stat").read_text()
    if int(stat.rsplit(")", 1)[1].split()[1]) != raylet:
        raise RuntimeError(f"process {pid} is not a worker of this test session's Ray")
    os.kill(pid, signal.SIGKILL)


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.05)


def run_driver(args: list[str], *, env: dict[str, str], timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run ``deblur ARGS`` as a second driver of this session's Ray instance.

    ``env`` reaches the driver and, through the job's runtime environment, every worker it starts
    (as ``ray job submit --runtime-env-json`` would send it), so a job can be pointed at another S3
    endpoint or given other credentials than the test session's own workers have.
    """
    import ray

    job_config = {"runtime_env": {"env_vars": env}}
    full_env = {
        **os.environ,
        **env,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job_config),
    }
    return subprocess.run(
        [sys.executable, "-m", "deblur.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
