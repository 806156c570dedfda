"""`python -m ddnb`: the same as the `ddnb` command."""
from __future__ import annotations

import sys

from ddnb.cli import main

sys.exit(main())
