"""`python -m bot`: start the Discord bot with its queue, GPU worker and web server."""

from __future__ import annotations

from bot.app import main

raise SystemExit(main())
