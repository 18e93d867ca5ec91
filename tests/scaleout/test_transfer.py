"""How a finished file travels from a worker to the bot, without processes or Redis: the worker's
placing step and the bot's store step, in each RESULT_TRANSFER mode, against the embedded path.
Both paths encode with the one runner encoder; this checks the files land alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.arq_executor import ArqExecutor
from bot.core.executor import RESULT_CRF
from bot.core.jobs import Job
from bot.core.results import ResultWriter
from generation.media import EncodedMedia, EncodeOptions, png_metadata
from generation.models import ModelSpec
from generation.params import request_from_dict
from generation.pipelines import PipelineManager
from generation.runner import encode_output
from generation.scaleout import JobPayload, MediaReport, ScaleoutSettings
from generation.settings import GenerationSettings
from generation.worker_runtime import WorkerRuntime
from tests.queue.conftest import make_job, queue_settings


def payload_for(job: Job) -> JobPayload:
    request = request_from_dict(job.params)
    return JobPayload(
        job_id=job.id,
        request=dict(job.params),
        png_metadata=png_metadata(request, job_id=job.id),
        month=job.created_at.strftime("%Y-%m"),
    )


def runtime(tiny: GenerationSettings, **overrides: object) -> WorkerRuntime:
    settings = ScaleoutSettings(_env_file=None, **{**tiny.model_dump(), **overrides})  # type: ignore[arg-type]
    return WorkerRuntime(settings=settings, manager_factory=lambda: None, preload=())  # type: ignore[arg-type,return-value]


def generate(manager: PipelineManager, job: Job) -> EncodedMedia:
    """The job run and encoded as both executors' runner does it."""
    request = request_from_dict(job.params)
    options = EncodeOptions(png_metadata=png_metadata(request, job_id=job.id), crf=RESULT_CRF)
    return encode_output(manager.run(request), options)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_inline_bytes_land_as_the_embedded_path_writes_them(
    kind: str,
    tiny_settings: GenerationSettings,
    tiny_registry: dict[str, ModelSpec],
    pipeline_manager: PipelineManager,
    tmp_path: Path,
) -> None:
    extra = {"frames": 4} if kind == "video" else {}
    job = make_job(tiny_registry, "fay", kind=kind, **extra)
    encoded = generate(pipeline_manager, job)
    found = runtime(tiny_settings).place(payload_for(job), encoded)
    assert found.data is not None and found.path is None
    assert (found.poster is not None) == (kind == "video")

    settings = queue_settings(tiny_settings, tmp_path, queue_url="redis://127.0.0.1:1/0")
    executor = ArqExecutor(settings=settings)
    result = executor._store_media(job, MediaReport.from_dict(found.to_dict()))
    embedded = ResultWriter(results_dir=tmp_path / "embedded").save(job, encoded)
    # same layout under RESULTS_DIR, same bytes, same description
    assert Path(result.path).relative_to(settings.results_dir) == Path(embedded.path).relative_to(
        tmp_path / "embedded"
    )
    assert Path(result.path).read_bytes() == Path(embedded.path).read_bytes()
    fields = ("media_type", "size_bytes", "width", "height", "frames", "fps")
    assert [getattr(result, f) for f in fields] == [getattr(embedded, f) for f in fields]
    assert (result.poster_path is None) == (embedded.poster_path is None)


def test_large_results_go_through_shared_storage_and_missing_mounts_say_so(
    tiny_settings: GenerationSettings,
    tiny_registry: dict[str, ModelSpec],
    pipeline_manager: PipelineManager,
    tmp_path: Path,
) -> None:
    job = make_job(tiny_registry, "gus", frames=4)
    encoded = generate(pipeline_manager, job)
    shared = tmp_path / "shared"
    # auto: inline up to the limit, a path above it
    small = runtime(tiny_settings, shared_results_dir=shared, result_inline_max_bytes=10**6)
    assert small.place(payload_for(job), encoded).data is not None
    big = runtime(tiny_settings, shared_results_dir=shared, result_inline_max_bytes=100)
    found = big.place(payload_for(job), encoded)
    assert found.data is None and found.path is not None and found.size_bytes > 100
    assert Path(found.path).parent == shared / job.created_at.strftime("%Y-%m")
    assert found.poster_path is not None and Path(found.poster_path).exists()
    # without a shared folder everything travels inline, whatever the size
    assert runtime(tiny_settings, result_inline_max_bytes=100).place(payload_for(job), encoded).data
    # path: always the shared folder
    forced = runtime(tiny_settings, shared_results_dir=shared, result_transfer="path")
    assert forced.place(payload_for(job), encoded).path is not None

    settings = queue_settings(tiny_settings, tmp_path, queue_url="redis://127.0.0.1:1/0")
    executor = ArqExecutor(settings=settings)
    report = MediaReport.from_dict(found.to_dict())
    result = executor._store_media(job, report)
    assert result.path == found.path and result.size_bytes == Path(found.path).stat().st_size
    assert result.poster_path == found.poster_path
    Path(found.path).unlink()
    with pytest.raises(FileNotFoundError, match="SHARED_RESULTS_DIR"):
        executor._store_media(job, report)
