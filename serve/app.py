"""`serve run serve.app:app` from the repository root: the endpoint with default settings.

The deployments live in ``deblur.serving`` (installed with the package, so container images need
no source tree); serve/config.yaml is the full configuration for `serve run` and `serve deploy`.
"""

from deblur.serving import build_app

app = build_app()
