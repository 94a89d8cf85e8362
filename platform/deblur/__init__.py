"""Online video deblurring (Kim et al., ICCV 2017: STRCNN+DTB) as a platform on Ray.

The few public names live here; importing the package does no work.
"""

from deblur.model import DeblurNet, ModelConfig, RecurrentState, build_model, summarize_model

__version__ = "0.1.0"

__all__ = [
    "DeblurNet",
    "ModelConfig",
    "RecurrentState",
    "__version__",
    "build_model",
    "summarize_model",
]
