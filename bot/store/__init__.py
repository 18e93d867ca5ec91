"""`python -m bot.store`: the store's command line, an entry point only.

The commands live with the store drivers in `bot.core.store.__main__`; this package gives them the
short name owners type.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
