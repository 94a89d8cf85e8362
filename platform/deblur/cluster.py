"""Connecting to Ray: the cluster of a submitted job, or a local instance for a command run here."""

from __future__ import annotations

import os
from typing import Any


def connect_ray(*, num_cpus: int | None = None) -> Any:
    """Join the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit``), else start a local one.

    Workers must reach the same object store as this driver. A local instance inherits this
    process's environment; a submitted job gets ``DEBLUR_S3_ENDPOINT`` (when not AWS) from its
    runtime environment (``--runtime-env-json``) and credentials from the nodes' AWS configuration.
    """
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            # Worker output (training progress lines, errors) is shown where the command runs.
            # The dashboard serves the state API that Ray Train's placement-group cleaner polls:
            # without it a Tune trial stopped early leaves its CPUs reserved for good, and on a
            # small machine the next trial waits for them forever.
            ray.init(num_cpus=num_cpus, include_dashboard=True)
    return ray
