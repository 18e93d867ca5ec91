"""The core every way in shares: jobs, the fair queue, executors, stores, results, metrics.

Never imports ``discord`` or ``aiohttp.web``."""
