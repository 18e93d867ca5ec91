"""The one vocabulary for where a job is in its life, shared by the queue, the executors and the workers.

A job moves through these phases in order; each layer uses the part it can see:

- the queue: ``CLAIMING`` (taken from the fair order, being handed over), ``STARTING`` (handed to an
  executor, waiting for a device), ``RUNNING``, ``FINISHING`` (the GPU is done; encoding and delivery
  remain);
- the arq executor: ``ENQUEUED`` (in Redis, waiting for a worker), ``RUNNING``, ``FINISHING``;
- a worker: ``LOADING`` (the model is being loaded), ``RUNNING`` (denoising steps), ``ENCODING``.

It is a ``StrEnum`` so that its members compare equal to, and serialise as, their plain names.
"""

from __future__ import annotations

import logging
from enum import StrEnum

log = logging.getLogger(__name__)


class JobPhase(StrEnum):
    CLAIMING = "claiming"
    ENQUEUED = "enqueued"
    STARTING = "starting"
    LOADING = "loading"
    RUNNING = "running"
    ENCODING = "encoding"
    FINISHING = "finishing"
