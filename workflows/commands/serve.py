"""`lxmert-pipeline serve`: a web page to ask a fine-tuned run about pictures."""

from __future__ import annotations

import argparse
import sys

HELP = "a local web page to ask a fine-tuned run about an image (upload or from its feature store); JSON API too"

_EPILOG = """\
Open the printed address in a browser: pick an image (upload a JPEG/PNG, or choose one of
the feature store's images), type a question (NLVR2: two images and a statement), and see
the top answers, the detector's regions, the regions the words attend to and the timings.
Scripts use the same answers as JSON:
  curl -F image=@cat.jpg -F question="what color is the cat?" http://127.0.0.1:8000/api/answer
  curl -F image_id=COCO_val2014_000000000042 -F question="..." http://127.0.0.1:8000/api/answer
The server listens on 127.0.0.1 (this machine only) unless --host says otherwise; it has no
authentication. Uploads go to a temporary folder, removed after each answer. Example:
  lxmert-pipeline serve --run runs/finetune/vqa-pretrained --port 8000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--run", required=True, metavar="RUN", help="a fine-tuning run (its best/ model, else final/)")
    parser.add_argument("--detector", metavar="RUN_OR_WEIGHTS",
                        help="detector weights for uploads (default: the one the run's features came from, as predict)")
    parser.add_argument("--features", metavar="STORE", help="the feature store (default: the one the run recorded)")
    parser.add_argument("--images", metavar="DIR",
                        help="the store's image files, to choose from on the page (default: the run's data root "
                             "images/ folder when there is one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                             "network, without authentication)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--checkpoint", choices=("best", "final"), help="which model of the run (default: best)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default 10 MB)")
    parser.add_argument("--max-megapixels", type=float, default=16.8,
                        help="largest uploaded image (default 16.8, i.e. 4096x4096)")


def run(args: argparse.Namespace) -> int:
    import logging
    import socket

    import uvicorn

    from pipeline.errors import PipelineError, UsageError
    from workflows.serve import Limits, Playground, build_app

    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise UsageError("--max-upload-mb and --max-megapixels must be positive")
    limits = Limits(upload_bytes=int(args.max_upload_mb * 2**20), pixels=int(args.max_megapixels * 1e6))
    playground = Playground(args.run, features=args.features, detector=args.detector, images=args.images,
                            checkpoint=args.checkpoint, device=args.device, limits=limits)
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((args.host, args.port))
        except OSError as err:
            raise PipelineError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        info = playground.info()
        where = ("this machine only" if host in ("127.0.0.1", "::1")
                 else "OPEN TO THE NETWORK, no authentication")
        print(f"serving the {info['task']} run {playground.loaded.directory} on http://{shown}:{port}/ "
              f"(listening on {host}: {where})", flush=True)
        if playground.uploads_off:
            print(f"uploads are off: {playground.uploads_off}", file=sys.stderr, flush=True)
        print(f"store images to choose from: {info['store_images']}"
              + (f" ({playground.images_dir})" if playground.images_dir else " (pass --images DIR)"),
              file=sys.stderr, flush=True)
        config = uvicorn.Config(build_app(playground), log_level="warning", access_log=False,
                                log_config=None, timeout_graceful_shutdown=5)
        logging.getLogger("workflows.serve").setLevel(logging.INFO)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        playground.close()
    return 0
