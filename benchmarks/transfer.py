"""BTCV / VS transfer benchmark: ``python benchmarks/transfer.py btcv --data DIR --weights uniseg-11task --from-scratch``.

The same as ``uniseg-hub benchmark`` (see :mod:`uniseg_hub.cli.benchmark` for the options and outputs).
"""

import sys

from uniseg_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
