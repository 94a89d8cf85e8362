"""`ray job submit -- python jobs/tune.py DATASET --storage s3://bucket/tune --name SWEEP [--grid 'm=[1,2,3]']`

A Ray Tune sweep on the cluster the job runs on: by default the paper's Table 1 grid (cnn,
strcnn, strcnn_dtb x m = 1, 2, 3) x learning rate (1e-4, 5e-4) x lambda (1e-5, 1e-4), each trial
a Ray Train run, poor trials stopped early (ASHA on validation PSNR), and a results table at the
end. `--grid key=[...]` replaces one axis. Same arguments as `deblur tune`.
"""

import sys

from deblur.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["tune", *sys.argv[1:]]))
