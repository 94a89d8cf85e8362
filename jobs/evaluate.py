"""`ray job submit -- python jobs/evaluate.py CHECKPOINT [CHECKPOINT ...] EVAL_PREFIX -o s3://bucket/reports/x`

PSNR, SSIM, a breakdown by tau and temporal consistency, as JSON, Markdown and PNG plots.
Same arguments as `deblur evaluate`.
"""

import sys

from deblur.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
