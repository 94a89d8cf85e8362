"""`ray job submit -- python jobs/train.py DATASET --storage s3://bucket/runs --name RUN [--preset paper]`

Trains on the cluster the job runs on (Ray Train, DDP over `num_workers`); resubmitting with the
same --name resumes from the run's latest checkpoint. Same arguments as `deblur train`.
"""

import sys

from deblur.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
