"""Benchmarks: commands that print measured figures with the machine they came from.

deblur bench data     high-speed frames/s: decode only, then Ray Data synthesis with 1 and 2 workers
deblur bench batch    archive deblurring: videos/s and frames/s with 1 and 2 actors
deblur bench serve    live sessions: per-frame latency p50/p99 for K concurrent sessions, overhead
deblur bench train    Ray Train: samples/s and GFLOP/s with 1 and 2 workers (and bf16 where the CPU has AMX)
deblur bench perf     all of it against the device's limit (roofline), as a table
deblur bench warmup   how many frames the recurrent state needs to forget its start (chunked videos)

Where things are:
    roofline.py   the machine's description and its fp32 limit
    inputs.py     the model and the videos the benchmarks run on
    data.py, batch.py, serve.py, train.py, warmup.py   one benchmark family each
    perf.py       the model against the limit: its step, its convs one by one, precision quality
    figures.py    ``deblur bench perf``: each row of its table a Figure (name, measure, goal)
    report.py     the table's text, and the README blocks commands rewrite with what they measured

Importing this package imports neither torch nor Ray: every benchmark imports them when it runs.
"""

from __future__ import annotations

from deblur.bench.batch import run_batch_benchmark
from deblur.bench.data import run_data_benchmark
from deblur.bench.figures import run_perf_benchmark
from deblur.bench.perf import measure_conv_ceiling, measure_model, measure_precision_quality, measure_step_breakdown
from deblur.bench.report import replace_marked_block
from deblur.bench.roofline import describe_machine, measure_roofline
from deblur.bench.serve import run_serve_benchmark
from deblur.bench.train import measure_training_step, run_train_benchmark
from deblur.bench.warmup import run_warmup_benchmark

__all__ = [
    "describe_machine",
    "measure_conv_ceiling",
    "measure_model",
    "measure_precision_quality",
    "measure_roofline",
    "measure_step_breakdown",
    "measure_training_step",
    "replace_marked_block",
    "run_batch_benchmark",
    "run_data_benchmark",
    "run_perf_benchmark",
    "run_serve_benchmark",
    "run_train_benchmark",
    "run_warmup_benchmark",
]
