"""`ray job submit -- python jobs/deblur_archive.py s3://in/prefix s3://out/prefix [--checkpoint CK] [--include GLOB]`

Deblurs every video under the input prefix on the cluster the job runs on, one recurrent actor per
video, into the same keys under the output prefix, with a manifest in OUT/_deblur/. A rerun skips
finished videos and videos that failed for bad input (--retry-failed tries those again) and retries
transient failures; --dry-run lists the work; --precision int8 (CPU) or bf16/fp16 (GPU) runs the
reduced-precision model, quantized once per actor. Same arguments as `deblur batch`.
"""

import sys

from deblur.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["batch", *sys.argv[1:]]))
