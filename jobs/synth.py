"""`ray job submit -- python jobs/synth.py IN_PREFIX OUT_PREFIX [--set key=value ...]`

Eq. 1 blur synthesis over the high-speed videos under IN_PREFIX, on the cluster the job runs on.
Same arguments as `deblur synth`.
"""

import sys

from deblur.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["synth", *sys.argv[1:]]))
