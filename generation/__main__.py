"""`python -m generation image|video "PROMPT" [flags]`: one generation, straight to a file.

No queue, no Discord: settings come from the environment / `.env` (flags override the
model, device and cache dir), the request is validated exactly as the bot validates it, and it
runs on the same runner (:mod:`generation.runner`) as the bot's jobs, encoder included. Exit
status 0 on success, 2 on bad input (with the reason on stderr), 1 on any other failure, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from generation.errors import UserError

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m generation",
        description="Generate an image (Stable Diffusion) or a video (text-to-video) from a prompt.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log loading and timings")
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{image,video}")
    for kind in ("image", "video"):
        p = sub.add_parser(kind, help=f"generate {'an image (PNG)' if kind == 'image' else 'a video (MP4)'}")
        p.add_argument("prompt", help="what to generate (1-1000 characters)")
        p.add_argument("--model", help="model id (default: IMAGE_MODEL / VIDEO_MODEL from settings)")
        p.add_argument("--negative-prompt", "-n", dest="negative_prompt", help="what to avoid")
        # numbers stay strings here: validate_request gives the same messages as the bot
        p.add_argument("--seed", help="0..2^32-1 (random when absent; printed at the end)")
        p.add_argument("--steps", help="denoising steps (model default when absent)")
        p.add_argument("--guidance", "--cfg", dest="guidance", help="guidance scale")
        p.add_argument("--width", help="pixels, a multiple of 8")
        p.add_argument("--height", help="pixels, a multiple of 8")
        if kind == "video":
            p.add_argument("--frames", help="number of frames (snapped to the model's rule, e.g. Wan's 4k+1)")
            p.add_argument(
                "--image",
                type=Path,
                help="animate this picture (its first frame) with the model's image-to-video partner",
            )
            p.add_argument("--fps", help="frames per second of the MP4")
            p.add_argument("--crf", type=int, default=23, help="H.264 quality, lower is better (default 23)")
            p.add_argument("--max-bytes", type=int, help="re-encode until the MP4 is at most this big")
        p.add_argument("-o", "--output", type=Path, help=f"output file (default {kind}-SEED.{_ext(kind)})")
        p.add_argument("--device", choices=("auto", "cuda", "cpu"), help="override DEVICE")
        p.add_argument("--cache-dir", type=Path, help="override MODEL_CACHE_DIR")
        p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    return parser


def _ext(kind: str) -> str:
    return "png" if kind == "image" else "mp4"


def _human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def run(args: argparse.Namespace) -> int:
    from generation.media import DEFAULT_CRF, EncodeOptions, png_metadata
    from generation.pipelines import PipelineManager
    from generation.runner import RunItem, run_one

    settings, registry, request = _validated(args)
    output_path: Path = args.output or Path(f"{args.kind}-{request.seed}.{_ext(args.kind)}")
    if output_path.is_dir():
        raise UserError(f"--output {output_path} is a directory; name a file.")
    options = EncodeOptions(
        png_metadata=png_metadata(request),
        crf=getattr(args, "crf", DEFAULT_CRF),
        max_bytes=getattr(args, "max_bytes", None),
    )
    manager = PipelineManager(settings, registry)
    bar = _progress_bar(args, request)
    try:
        result = run_one(
            RunItem(key="cli", request=request, encode=options, timeout_s=math.inf),
            manager=manager,
            step_watchdog_s=settings.step_watchdog_s,
            on_step=(lambda info: bar.update(info.step - bar.n)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    if result.status != "complete" or result.encoded is None:
        return _failed(result)
    encoded = result.encoded
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(encoded.data)
    print(_summary(output_path, request, encoded, result.report, crf=options.crf))  # the CLI's one line
    return 0


def _failed(result: Any) -> int:
    """Bad input (a model that cannot load, say) exits 2 through `main`; anything else exits 1."""
    if isinstance(result.exception, UserError):
        raise result.exception
    if result.exception is not None:
        log.error("generation failed", exc_info=result.exception)
    sys.stderr.write(f"error: {result.error}\n")
    return EXIT_FAILED


def _validated(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Settings, model registry and the request, validated exactly as the bot validates it."""
    from generation.models import build_registry, default_model_id, get_spec, image_to_video_spec
    from generation.params import validate_request
    from generation.settings import GenerationSettings

    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.cache_dir:
        overrides["model_cache_dir"] = args.cache_dir
    settings = GenerationSettings(**overrides)
    registry = build_registry(settings)
    image: Path | None = getattr(args, "image", None)
    model_id = args.model or default_model_id(settings, args.kind, image=image is not None)
    spec = get_spec(registry, model_id, kind=args.kind)
    raw: dict[str, Any] = {"prompt": args.prompt, "negative_prompt": args.negative_prompt}
    if image is not None:
        if not image.is_file():
            raise UserError(f"--image {image} is not a file.")
        spec = image_to_video_spec(registry, spec)
        raw["image"] = str(image)
    names = ["seed", "steps", "guidance", "width", "height"]
    if args.kind == "video":
        names += ["frames", "fps"]
    raw.update({name: getattr(args, name) for name in names if getattr(args, name) is not None})
    request = validate_request(args.kind, raw, spec, settings)
    for note in request.notes:
        sys.stderr.write(f"note: {note}\n")
    return settings, registry, request


def _progress_bar(args: argparse.Namespace, request: Any) -> Any:
    """A tqdm bar on a terminal (None otherwise, or with --no-progress)."""
    if args.no_progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(
        total=request.steps, desc=f"{request.model} seed {request.seed}", unit="step", file=sys.stderr
    )


def _summary(path: Path, request: Any, encoded: Any, report: Any, *, crf: int) -> str:
    extra = ""
    fit = encoded.fit
    if fit is not None and (fit.crf != crf or fit.scale != 1.0):
        extra = f" (fitted: crf {fit.crf}, scale {fit.scale:.2f}, {fit.passes} re-encodes)"
    t = report.stages
    size = f"{request.width}x{request.height}"
    if request.kind == "video":
        size += f"x{request.frames}@{request.fps}fps"
    return (
        f"wrote {path} ({_human_size(encoded.size)}){extra} model={request.model} seed={request.seed} "
        f"steps={request.steps} {size} on {report.device}: load {t['load']:.1f}s "
        f"denoise {t['denoise']:.1f}s decode {t['decode']:.1f}s encode {report.encode_s or 0.0:.1f}s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except UserError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return EXIT_BAD_INPUT
    except (ValidationError, SettingsError) as exc:  # a wrong value in the environment or .env
        from generation.settings import GenerationSettings, settings_error_lines

        for line in settings_error_lines(exc, GenerationSettings):
            sys.stderr.write(f"error: {line}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
