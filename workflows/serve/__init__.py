"""`lxmert-pipeline serve`: a local web page that asks a fine-tuned run about a picture.

- `app.py`: `Playground` (the run, its detector and feature store, loaded once; one model
  thread that every request queues for) and `build_app` (the Starlette routes: the page,
  `POST /api/answer`, the store's images and thumbnails).
- `static/`: the page itself, plain HTML/JS/CSS served as files (no build step, no CDN).

Answers come from `pipeline.finetune.ask`, regions from `pipeline.extract`: the code
`predict` runs, so the page and the command line answer alike.
"""

from workflows.serve.app import Limits, Playground, build_app

__all__ = ["Limits", "Playground", "build_app"]
