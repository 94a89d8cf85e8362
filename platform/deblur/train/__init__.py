"""Training (paper Sec. 5.2, 5.3).

    step.py    settings (``TrainConfig``, presets), the loss of Eq. 4, one optimiser step,
               checkpointed training state; no Ray
    driver.py  the loop of every Ray Train worker and ``run_training``
    tune.py    Ray Tune over training runs (``run_tuning``)

Import from the module (``from deblur.train.driver import run_training``); importing the package
imports none of them, so neither Ray nor torch.
"""
