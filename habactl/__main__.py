"""`python -m habactl ...`: the same command line as `habactl ...`."""

import os
import sys

try:
    from habactl.cli.main import main

    if __name__ == "__main__":
        main()
except KeyboardInterrupt:  # Ctrl-C while the CLI loads: one line, not a traceback per rank
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone says it
        print("habactl: interrupted", file=sys.stderr)
    raise SystemExit(130) from None
