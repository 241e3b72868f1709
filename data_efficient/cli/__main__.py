"""`python3 -m data_efficient.cli` runs the `data-efficient` command."""

import sys

from data_efficient.cli import main

sys.exit(main())
