"""Known-harmless messages from diffusers and transformers, silenced on the loggers that emit them.

Each filter sits on the one library logger that raises its message (never on the root logger or
Python's global warning filters), so anything else those libraries say still shows:

- transformers, on import: "`CLIPImageProcessor` requires torchvision (not installed); falling
  back to `CLIPImageProcessorPil`". The PIL processor is the one the safety checker needs; the
  project does not install torchvision (a second multi-GB CUDA-coupled wheel) on purpose.
- diffusers, each time a `TextToVideoSDPipeline` is built: "The TextToVideoSDPipeline has been
  deprecated …". It is the pipeline damo and zeroscope ship with (see generation/models.py) and
  the version is pinned; the notice is kept, but said once per process instead of at every build
  (building a tiny twin and loading it back made it appear twice per start).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
DEPRECATED_PIPELINE = "has been deprecated and will not receive bug fixes"


class DropMessages(logging.Filter):
    """Drops records containing one of `needles`."""

    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


class OnceOnly(logging.Filter):
    """Lets the first record containing `needle` through and drops its repeats."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.needle not in message:
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


FILTERS: dict[str, logging.Filter] = {
    "transformers.utils.import_utils": DropMessages(TORCHVISION_FALLBACK),
    "diffusers.pipelines.pipeline_utils": OnceOnly(DEPRECATED_PIPELINE),
}


def quiet_known_warnings() -> None:
    """Install the filters above (idempotent); call before diffusers or transformers is imported."""
    for name, flt in FILTERS.items():
        logger = logging.getLogger(name)
        if flt not in logger.filters:
            logger.addFilter(flt)
