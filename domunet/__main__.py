"""Allow `python3 -m domunet`."""

import sys

from domunet.cli import main

sys.exit(main())
