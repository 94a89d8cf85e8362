"""Online video deblurring (Kim et al., ICCV 2017: STRCNN+DTB) as a platform on Ray.

The few public names live here, imported on first use: importing the package does no work, and
the processes that only read, synthesize or write data (Ray Data tasks, most CLI commands) never
import torch, which costs some 2 s and 190 MB in each of them on a small machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deblur.model import DeblurNet, ModelConfig, RecurrentState, build_model, summarize_model

__version__ = "0.1.0"

__all__ = ["DeblurNet", "ModelConfig", "RecurrentState", "__version__", "build_model", "summarize_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:  # a model name (__version__ is found before this is asked)
        from deblur import model

        return getattr(model, name)
    raise AttributeError(f"module 'deblur' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
