"""`python -m generation image|video "PROMPT" [flags]`: one generation, straight to a file.

No queue, no Discord: settings come from the environment / `.env` (flags override the
model, device and cache dir), the request is validated exactly as the bot validates it, and
the result is encoded by the same media code. Exit status 0 on success, 2 on bad input (with
the reason on stderr), 1 on an unexpected failure, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from generation.errors import UserError

log = logging.getLogger(__name__)

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
    from generation.media import encode_output
    from generation.models import build_registry, default_model_id, get_spec, image_to_video_spec
    from generation.params import validate_request
    from generation.pipelines import PipelineManager, StepInfo
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
    output_path: Path = args.output or Path(f"{args.kind}-{request.seed}.{_ext(args.kind)}")
    if output_path.is_dir():
        raise UserError(f"--output {output_path} is a directory; name a file.")

    manager = PipelineManager(settings, registry)
    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=request.steps, desc=f"{spec.id} seed {request.seed}", unit="step", file=sys.stderr)

    def on_step(info: StepInfo) -> None:
        if bar is not None:
            bar.update(info.step - bar.n)

    try:
        output = manager.run(request, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()

    encoded = encode_output(
        output,
        max_bytes=getattr(args, "max_bytes", None),
        crf=getattr(args, "crf", 23),
        extra_metadata={"software": "imagine-bot"},
    )
    data = encoded.data
    extra = ""
    if encoded.fit is not None and (encoded.fit.crf != args.crf or encoded.fit.scale != 1.0):
        fit = encoded.fit
        extra = f" (fitted: crf {fit.crf}, scale {fit.scale:.2f}, {fit.passes} re-encodes)"
    encode_s = encoded.encode_s
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(data)

    t = output.timings
    size = f"{request.width}x{request.height}"
    if args.kind == "video":
        size += f"x{request.frames}@{request.fps}fps"
    print(  # the CLI's one-line summary
        f"wrote {output_path} ({_human_size(len(data))}){extra} model={spec.id} seed={request.seed} "
        f"steps={request.steps} {size} on {output.device}: load {t['load']:.1f}s "
        f"denoise {t['denoise']:.1f}s decode {t['decode']:.1f}s encode {encode_s:.1f}s"
    )
    return 0


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
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
