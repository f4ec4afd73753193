"""The playground's web application: one page and a small JSON API over a fine-tuned run.

Concurrency: the model and the detector are used by one worker thread only (a
single-thread executor); requests wait in its queue, at most `Limits.queue` of them (more
get 503), while the event loop keeps serving the page, thumbnails and the queue's other
requests' uploads. One thread because the detector and LXMERT already use every core for
one image, and a model shared between threads would need a lock anyway.

Uploads are bounded before they are parsed (Content-Length), checked from the header for
format and pixel count (the server's own limit, below PIL's decompression-bomb one), and
written only into the server's temporary folder, removed when the request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
UPLOAD_FORMATS = ("JPEG", "PNG")
# form fields: the first image is `image` (an upload) or `image_id` (from the store), an
# NLVR2 run's second one `image2` or `image_id2`
IMAGE_FIELDS = (("image", "image_id"), ("image2", "image_id2"))


@dataclass(frozen=True)
class Limits:
    upload_bytes: int = 10 * 2**20        # the whole request body
    pixels: int = 4096 * 4096             # per image (PIL's bomb limit is higher: this one is ours)
    question_chars: int = 300
    queue: int = 8                        # requests waiting for the model at once
    top: int = 20                         # most answers one request may ask for


class RequestError(Exception):
    """A request the user can fix: `status` and one line naming the field or file."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ImageSource:
    name: str                 # what the user knows it as: the upload's file name, or the store's image_id
    path: Path                # a file to read (the upload in the temporary folder, or the store's image file)
    from_store: bool


class Playground:
    """A fine-tuned run ready to answer: model, detector, feature store and its image files."""

    def __init__(self, run: str | os.PathLike, *, features: str | os.PathLike | None = None,
                 detector: str | None = None, images: str | os.PathLike | None = None,
                 checkpoint: str | None = None, device: str = "cpu", limits: Limits = Limits()):
        from pipeline.extract import Extractor, spec_for_store
        from pipeline.features import FeatureStore
        from pipeline.finetune.predict import load_finetuned, run_record
        from pipeline.images import discover_images
        from pipeline.inputs import check_store_fits

        self.limits = limits
        self.loaded = load_finetuned(run, features=features, checkpoint=checkpoint)
        self.loaded.model.to(device)
        self.store = FeatureStore(self.loaded.store_path)
        self.metadata = self.store.metadata
        check_store_fits(self.loaded.model.config, self.metadata, self.loaded.store_path, labels=False)
        self.pair = self.loaded.name == "nlvr2"
        # uploads need the detector the store came from; without it the store's images still work
        self.extractor = None
        self.uploads_off = None
        try:
            self.extractor = Extractor(spec_for_store(self.metadata, self.loaded.store_path, detector, device=device))
        except PipelineError as err:
            self.uploads_off = str(err)
        if images is None:
            default = Path(run_record(run)["task_options"].get("data") or "") / "images"
            images = default if default.is_dir() else None
        self.images_dir = Path(images) if images is not None else None
        self.store_images: dict[str, Path] = {}
        if self.images_dir is not None:
            self.store_images = {e.image_id: Path(e.path) for e in discover_images(self.images_dir)
                                 if e.image_id in self.store}
        if self.extractor is None and not self.store_images:
            raise PipelineError(f"nothing to ask about: uploads need the store's detector ({self.uploads_off}), "
                                "and no image of the store was found (pass --images DIR)")
        self.store_ids = sorted(self.store_images)
        self.temp = tempfile.TemporaryDirectory(prefix="lxmert-serve-")
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.waiting = 0

    def close(self) -> None:
        """Finish the answer in progress, drop the queued ones, remove the temporary folder."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.temp.cleanup()

    def info(self) -> dict[str, Any]:
        config = self.loaded.model.config
        return {"task": self.loaded.name, "pair": self.pair, "run": str(self.loaded.directory),
                "store": str(self.loaded.store_path), "language_only": bool(self.loaded.task.language_only),
                "cross_layers": int(getattr(config, "x_layers", 0) or 0),
                "uploads": self.extractor is not None, "uploads_off": self.uploads_off,
                "store_images": len(self.store_ids),
                "limits": {"upload_bytes": self.limits.upload_bytes, "pixels": self.limits.pixels,
                           "question_chars": self.limits.question_chars}}

    def answer(self, question: str, sources: list[ImageSource], top: int) -> dict[str, Any]:
        """What the page shows, for one question about the request's image(s); runs on the model thread."""
        from pipeline.extract import extract_files
        from pipeline.finetune.ask import ask, region_names

        timings: dict[str, float] = {}
        uploads = [s for s in sources if not s.from_store]
        images = {}
        if uploads:
            parts: dict[str, float] = {}
            start = time.perf_counter()
            try:
                extracted = extract_files([s.path for s in uploads], self.extractor, timings=parts)
            except PipelineError as err:     # one line naming the temporary file: name the upload instead
                reason = str(err)[len(err.path) + 2:] if err.path else str(err)
                name = next((s.name for s in uploads if str(s.path) == err.path), uploads[0].name)
                raise RequestError(400, f"{name}: {reason}") from None
            detection = sum(parts.values())
            timings["decode"] = time.perf_counter() - start - detection   # decode, resize, region rows
            timings["detection"] = detection
            images.update({id(s): f for s, f in zip(uploads, extracted)})
        for s in sources:
            if s.from_store:
                images[id(s)] = self.store.get(s.name)
        regions = [images[id(s)] for s in sources]
        start = time.perf_counter()
        reply = ask(self.loaded, question, regions, self.metadata, top=top)
        timings["model"] = time.perf_counter() - start
        attention = None
        if reply.layers:
            attention = {"image": 0, "tokens": reply.attention.tokens,
                         "layers": [[[round(float(w), 4) for w in row] for row in m.weights] for m in reply.layers],
                         "region_scores": [[round(float(v), 4) for v in m.region_scores()] for m in reply.layers]}
        return {
            "task": self.loaded.name, "question": question,
            "answers": [{"answer": a, "score": round(p, 6)} for a, p in reply.answers],
            "images": [_image_json(s, r, region_names(r, self.metadata)) for s, r in zip(sources, regions)],
            "attention": attention,
            "timings_ms": {k: round(v * 1000, 1) for k, v in timings.items()},
        }

    def thumbnail(self, image_id: str, size: int = 160) -> bytes:
        with Image.open(self.store_images[image_id]) as img:
            img.thumbnail((size, size))
            out = io.BytesIO()
            img.convert("RGB").save(out, "JPEG", quality=80)
        return out.getvalue()


def _image_json(source: ImageSource, regions, names: list[str]) -> dict[str, Any]:
    return {"name": source.name, "from_store": source.from_store, "width": int(regions.width),
            "height": int(regions.height),
            "regions": [{"box": [round(float(v), 1) for v in box], "label": name,
                         "object_score": round(float(oc), 4), "attribute_score": round(float(ac), 4)}
                        for box, name, oc, ac in zip(regions.boxes, names, regions.objects_conf, regions.attrs_conf)]}


def _check_upload(path: Path, name: str, limits: Limits) -> None:
    """Format and pixel count from the header alone, before any pixel is decoded."""
    try:
        with Image.open(path) as img:
            fmt, (w, h) = img.format, img.size
    except Image.DecompressionBombError:
        raise RequestError(413, f"{name}: over PIL's decompression-bomb limit") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(415, f"{name}: not an image (upload a JPEG or PNG)") from None
    if fmt not in UPLOAD_FORMATS:
        raise RequestError(415, f"{name}: a {fmt} image; upload a JPEG or PNG")
    if w * h > limits.pixels:
        raise RequestError(413, f"{name}: {w}x{h} = {w * h} pixels is over this server's limit of "
                                f"{limits.pixels} pixels")


async def _sources(form, playground: Playground) -> list[ImageSource]:
    """The request's images, uploads saved into the temporary folder (the caller removes them)."""
    wanted = IMAGE_FIELDS[:2 if playground.pair else 1]
    sources: list[ImageSource] = []
    try:
        for upload_field, id_field in wanted:
            upload, image_id = form.get(upload_field), form.get(id_field)
            if hasattr(upload, "read") and upload.filename:
                if playground.extractor is None:
                    raise RequestError(400, f"uploads are off on this server: {playground.uploads_off}")
                name = os.path.basename(upload.filename)
                path = Path(playground.temp.name) / uuid.uuid4().hex
                sources.append(ImageSource(name, path, from_store=False))
                path.write_bytes(await upload.read())
                _check_upload(path, name, playground.limits)
            elif isinstance(image_id, str) and image_id:
                if image_id not in playground.store_images:
                    raise RequestError(404, f"{id_field}: no image {image_id!r} in the feature store's images")
                sources.append(ImageSource(image_id, playground.store_images[image_id], from_store=True))
            else:
                which = "two images (left: image or image_id, right: image2 or image_id2)" if playground.pair \
                    else "an image (field image: a JPEG or PNG upload, or image_id: one of the store's images)"
                raise RequestError(400, f"a {playground.loaded.name} question needs {which}")
    except BaseException:
        _remove_uploads(sources)
        raise
    return sources


def _remove_uploads(sources: list[ImageSource]) -> None:
    for s in sources:
        if not s.from_store:
            s.path.unlink(missing_ok=True)


def build_app(playground: Playground) -> Starlette:
    limits = playground.limits

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def info(request: Request) -> Response:
        return JSONResponse(playground.info())

    async def store_images(request: Request) -> Response:
        try:
            page_no = max(0, int(request.query_params.get("page", 0)))
            per_page = min(100, max(1, int(request.query_params.get("per_page", 24))))
        except ValueError:
            raise RequestError(400, "page and per_page must be whole numbers") from None
        ids = playground.store_ids[page_no * per_page:(page_no + 1) * per_page]
        return JSONResponse({"total": len(playground.store_ids), "page": page_no, "per_page": per_page, "ids": ids})

    def store_file(request: Request) -> str:
        image_id = request.path_params["image_id"]
        if image_id not in playground.store_images:
            raise RequestError(404, f"no image {image_id!r} in the feature store's images")
        return image_id

    async def store_image(request: Request) -> Response:
        return FileResponse(playground.store_images[store_file(request)])

    async def thumbnail(request: Request) -> Response:
        data = await asyncio.get_running_loop().run_in_executor(None, _thumbnail, store_file(request))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @functools.lru_cache(maxsize=512)
    def _thumbnail(image_id: str) -> bytes:
        return playground.thumbnail(image_id)

    async def answer(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None:
            raise RequestError(411, "send the form with a Content-Length (multipart/form-data)")
        if not length.isdigit() or int(length) > limits.upload_bytes:
            raise RequestError(413, f"the request is {length} bytes; this server takes at most "
                                    f"{limits.upload_bytes} bytes")
        if not request.headers.get("content-type", "").startswith(("multipart/form-data",
                                                                   "application/x-www-form-urlencoded")):
            raise RequestError(415, "send a form (multipart/form-data): question, image or image_id, top")
        if playground.waiting >= limits.queue:
            raise RequestError(503, f"busy: {playground.waiting} questions are waiting for the model; try again")
        async with request.form(max_files=2, max_fields=8, max_part_size=64 * 1024) as form:
            question = form.get("question")
            if not isinstance(question, str) or not question.strip():
                raise RequestError(400, "question: empty (type a question, or for NLVR2 a statement)")
            question = question.strip()
            if len(question) > limits.question_chars:
                raise RequestError(400, f"question: {len(question)} characters, at most {limits.question_chars}")
            top = form.get("top", "5")
            if not isinstance(top, str) or not top.isdigit() or not 1 <= int(top) <= limits.top:
                raise RequestError(400, f"top: a whole number from 1 to {limits.top}, not {top!r}")
            sources = await _sources(form, playground)
        playground.waiting += 1
        queued = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                playground.executor, _timed, playground, question, sources, int(top), queued)
        finally:
            playground.waiting -= 1
            _remove_uploads(sources)
        result["timings_ms"]["total"] = round((time.perf_counter() - queued) * 1000, 1)
        log.info("%s -> %s (%.0f ms)", question, result["answers"][0]["answer"], result["timings_ms"]["total"])
        return JSONResponse(result)

    async def request_error(request: Request, err: RequestError) -> Response:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    async def pipeline_error(request: Request, err: PipelineError) -> Response:
        return JSONResponse({"error": str(err)}, status_code=422)

    async def server_error(request: Request, err: Exception) -> Response:
        log.exception("answering failed")
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/answer", answer, methods=["POST"]),
        Route("/api/images", store_images),
        Route("/api/images/{image_id}", store_image),
        Route("/api/thumbnails/{image_id}", thumbnail),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # closed here, not after uvicorn returns: on SIGTERM uvicorn re-raises the signal once
        # it has shut down, and the process ends before any code after `run` would run
        yield
        playground.close()

    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={RequestError: request_error, PipelineError: pipeline_error,
                                         Exception: server_error})


def _timed(playground: Playground, question: str, sources: list[ImageSource], top: int,
           queued: float) -> dict[str, Any]:
    waited = time.perf_counter() - queued
    result = playground.answer(question, sources, top)
    result["timings_ms"]["queue"] = round(waited * 1000, 1)
    return result
