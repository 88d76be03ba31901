"""Allow `python3 -m domunet`."""

import sys

from domunet.entry import main

sys.exit(main())
