"""`python -m bot.store migrate FROM_URL TO_URL [--merge]` (see `bot.core.store.__main__`)."""

from __future__ import annotations

import logging
import sys

from bot.core.store.__main__ import main

log = logging.getLogger(__name__)

if __name__ == "__main__":
    sys.exit(main())
