"""`python -m tests.reliability.faulty_bot`: exactly `python -m bot`, plus GPU faults on demand.

A real GPU fails in ways a CPU never does (out of memory, a kernel that never returns). This
launcher wraps `PipelineManager.run` before handing over to `bot.app.main`, so a member's
prompt can ask for a fault, and everything else (settings, queue, worker, watchdog, delivery)
is the production code path:

- ``[oom]`` in the prompt: the first run of that prompt raises ``torch.cuda.OutOfMemoryError``
  at its first step (the worker must lower the memory mode and retry);
- ``[oom-always]``: every run of it does (no mode is lean enough);
- ``[hang]``: the first step never returns (the watchdog must give up on it);
- ``[slow:S]``: every step sleeps S seconds (a long job that costs no CPU).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import torch

from generation.pipelines import PipelineManager, StepInfo

log = logging.getLogger(__name__)

_SLOW = re.compile(r"\[slow:([0-9.]+)\]")
_oomed: set[str] = set()
_never = threading.Event()


def _faulty_run(original: Any) -> Any:
    def run(self: PipelineManager, request: Any, *, on_step: Any = None, should_cancel: Any = None) -> Any:
        prompt: str = request.prompt
        slow = _SLOW.search(prompt)

        def step(info: StepInfo) -> None:
            if "[oom-always]" in prompt or ("[oom]" in prompt and prompt not in _oomed):
                _oomed.add(prompt)
                log.warning("fault injection: out of memory at step %d", info.step)
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            if "[hang]" in prompt:
                log.warning("fault injection: step %d hangs", info.step)
                _never.wait()
            if slow:
                time.sleep(float(slow.group(1)))
            if on_step is not None:
                on_step(info)

        return original(self, request, on_step=step, should_cancel=should_cancel)

    return run


def install() -> None:
    PipelineManager.run = _faulty_run(PipelineManager.run)  # type: ignore[method-assign]


if __name__ == "__main__":
    from bot.app import main

    install()
    raise SystemExit(main())
