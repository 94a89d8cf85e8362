"""`ray job submit -- python jobs/corpus.py --out s3://bucket/raw --videos N --seconds S --seed K`

Writes the synthetic 240 fps corpus (see deblur.data.corpus). Same arguments as `deblur corpus`.
"""

import sys

from deblur.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["corpus", *sys.argv[1:]]))
