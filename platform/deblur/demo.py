"""The README's main command: deblur a sample video with the bundled model.

Needs the bundled default model (shipped by the training work); until then it says so.
"""

from __future__ import annotations

import sys

from deblur.checkpoint import CheckpointError, bundled_checkpoint_path


def main() -> int:
    if bundled_checkpoint_path() is None:
        print(
            "deblur demo: no bundled default model ships with this version yet; "
            "`deblur video IN -o OUT --checkpoint CK` works with any checkpoint",
            file=sys.stderr,
        )
        return 1
    raise CheckpointError("demo pipeline not implemented yet")


if __name__ == "__main__":
    raise SystemExit(main())
