"""`serve`: the playground answers over HTTP exactly as `predict` does, refuses bad uploads
with a 4xx and one line, answers concurrent requests, writes nothing but its temporary
folder, listens on localhost; and the page, driven in headless Chromium, shows the answer
and draws the detector's regions."""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.extract import Extractor, extract_shard, resolve_spec
from pipeline.features import FeatureStore, finalize_store
from pipeline.finetune.ask import ask
from pipeline.finetune.predict import load_finetuned
from pipeline.finetune.splits import read_vqa_split
from pipeline.images import discover_images
from pipeline.stages.finetune import FinetuneOptions, finetune
from tests.helpers.finetune_world import make_world
from workflows.cli import main

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclasses.dataclass
class Served:
    url: str
    run: Path
    world: Path
    store: Path
    temp: Path                 # the server process's TMPDIR
    banner: str                # what it printed on stdout when it started


def detector_store(world: Path, out: Path) -> Path:
    """The images of the world's VQA splits extracted by the tiny detector (random, seeded):
    a store that `predict` and `serve` can extend to new images with the same detector."""
    wanted = {q.image_id for split in ("train2014", "val2014") for q in read_vqa_split(world, split)}
    entries = [e for e in discover_images(world / "images") if e.image_id in wanted]
    extractor = Extractor(resolve_spec("tiny", "random"))
    shard = extract_shard(0, entries, out, extractor, batch_size=4, feature_dtype="float32")
    finalize_store(out, extractor.spec.store_metadata("float32"), [shard.info])
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    world, _ = make_world(root, images=60, seed=4)
    store = detector_store(world, root / "features")
    finetune(FinetuneOptions("vqa", str(store), str(world), preset="tiny", answer_min_count=2), root / "vqa",
             layers=[{"steps": 10, "batch_size": 16, "lr": 2e-3, "progress": False, "seed": 2}])
    torch.set_num_threads(threads)
    temp = root / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "workflows.cli", "serve", "--run", str(root / "vqa"), "--port",
                               "0"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", banner)
        assert found, f"no address in {banner!r}; stderr: {server.stderr.read() if server.poll() is not None else ''}"
        url = found.group(0)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "api/info", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        yield Served(url, root / "vqa", world, store, temp, banner)
    finally:
        server.terminate()
        server.wait(timeout=20)
    # stopped (SIGTERM, as a service manager stops it), it leaves no temporary folder behind
    assert not list(temp.iterdir())


def post(url: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]] = {}) -> tuple[int, dict]:
    """POST a multipart form as a browser does; (status, JSON reply)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(url + "api/answer", data=body.getvalue(), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def val_examples(served: Served, n: int):
    return read_vqa_split(served.world, "val2014")[:n]


def image_file(served: Served, image_id: str) -> Path:
    return next(p for p in (served.world / "images").iterdir() if p.stem == image_id)


def test_the_api_answers_as_predict_does(served, capsys):
    example = val_examples(served, 1)[0]
    image = image_file(served, example.image_id)
    status, reply = post(served.url, {"question": example.sentence, "top": "5"},
                         {"image": (image.name, image.read_bytes())})
    assert status == 200, reply
    assert main(["predict", "--run", str(served.run), "--image", str(image), "--question", example.sentence]) == 0
    printed = capsys.readouterr().out.splitlines()[1:]
    expected = [(line.split()[0], float(line.split()[1])) for line in printed]
    assert [a["answer"] for a in reply["answers"]] == [a for a, _ in expected]
    assert [a["score"] for a in reply["answers"]] == pytest.approx([p for _, p in expected], abs=6e-4)
    # what the page draws: the detector's labelled regions, words x regions for every cross layer
    (drawn,) = reply["images"]
    width, height = Image.open(image).size
    assert (drawn["width"], drawn["height"]) == (width, height) and drawn["regions"]
    assert all(0 <= r["box"][0] <= r["box"][2] <= width and r["label"] for r in drawn["regions"])
    attention = reply["attention"]
    assert attention["tokens"][0] == "[CLS]" and len(attention["layers"]) == 2
    assert all(len(row) == len(drawn["regions"]) for row in attention["layers"][-1])
    assert {"decode", "detection", "model", "total"} <= set(reply["timings_ms"])

    # a store image is answered from its stored regions (no detection), as evaluate would
    status, stored = post(served.url, {"question": example.sentence, "image_id": example.image_id})
    store = FeatureStore(served.store)
    direct = ask(load_finetuned(served.run), example.sentence, [store.get(example.image_id)], store.metadata)
    assert status == 200 and [a["answer"] for a in stored["answers"]] == [a for a, _ in direct.answers]
    assert "detection" not in stored["timings_ms"]


def test_bad_uploads_get_a_4xx_and_one_line_naming_the_file(served, tmp_path):
    question = {"question": "what color is the circle?"}
    jpeg = image_file(served, val_examples(served, 1)[0].image_id).read_bytes()
    huge = io.BytesIO()
    Image.new("L", (5000, 4000)).save(huge, "PNG")        # 20 MP: a few KB on the wire
    gif = io.BytesIO()
    Image.new("RGB", (40, 30)).save(gif, "GIF")
    cases = [
        ({"image": ("notes.txt", b"not a picture at all")}, question, 415, "notes.txt: not an image"),
        ({"image": ("cut.jpg", jpeg[:len(jpeg) // 3])}, question, 400, "cut.jpg: truncated image data"),
        ({"image": ("huge.png", huge.getvalue())}, question, 413, "huge.png: 5000x4000 = 20000000 pixels is over"),
        ({"image": ("anim.gif", gif.getvalue())}, question, 415, "anim.gif: a GIF image; upload a JPEG or PNG"),
        ({}, question, 400, "needs an image"),
        ({"image": ("ok.jpg", jpeg)}, {"question": " "}, 400, "question: empty"),
        ({"image": ("ok.jpg", jpeg)}, {**question, "top": "0"}, 400, "top: a whole number from 1 to 20"),
    ]
    for files, fields, status, message in cases:
        got, reply = post(served.url, fields, files)
        assert (got, message) == (status, message) and message in reply["error"], reply
        assert "\n" not in reply["error"]
    # a body over the limit is refused from its Content-Length, before any of it is read
    host, port = re.match(r"http://([\d.]+):(\d+)/", served.url).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("POST", "/api/answer")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(11 * 2**20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "this server takes at most 10485760 bytes" in json.loads(response.read())["error"]
    connection.close()
    # nothing of those uploads stays behind
    assert not [p for p in served.temp.rglob("*") if p.is_file()]


def test_concurrent_requests_are_all_answered_as_one_by_one(served):
    examples = val_examples(served, 3)
    uploads = [(e.sentence, image_file(served, e.image_id)) for e in examples]

    def ask_one(question: str, image: Path) -> tuple[int, dict]:
        return post(served.url, {"question": question}, {"image": (image.name, image.read_bytes())})

    one_by_one = [ask_one(*u) for u in uploads]
    replies: dict[int, tuple[int, dict]] = {}
    threads = [threading.Thread(target=lambda i=i: replies.__setitem__(i, ask_one(*uploads[i]))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(replies) == [0, 1, 2] and all(status == 200 for status, _ in replies.values())
    assert [replies[i][1]["answers"] for i in range(3)] == [reply["answers"] for _, reply in one_by_one]


def test_it_listens_on_localhost_says_so_and_writes_only_its_temporary_folder(served):
    assert "127.0.0.1" in served.banner and "this machine only" in served.banner

    def files():      # the run, its store and world: everything but the server's TMPDIR
        return {p: p.stat().st_mtime_ns for p in served.run.parent.rglob("*")
                if p.is_file() and served.temp not in p.parents}

    before = files()
    image = image_file(served, val_examples(served, 1)[0].image_id)
    assert post(served.url, {"question": "how many circles?"}, {"image": (image.name, image.read_bytes())})[0] == 200
    assert files() == before
    (folder,) = served.temp.iterdir()
    assert folder.name.startswith("lxmert-serve-") and not list(folder.iterdir())


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_the_page_in_chromium_shows_the_answer_and_draws_the_regions(served, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install playwright)")
    example = val_examples(served, 1)[0]
    image = image_file(served, example.image_id)
    status, expected = post(served.url, {"question": example.sentence}, {"image": (image.name, image.read_bytes())})
    assert status == 200
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})       # a phone
            page.goto(served.url)
            page.wait_for_selector("#thumbs img", state="attached")              # the store's images, paged
            page.set_input_files('.slot[data-slot="0"] input[type=file]', str(image))
            page.fill("#question", example.sentence)
            page.click("#ask-button")
            page.wait_for_selector("#answers li", timeout=30_000)
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            answers = page.locator("#answers .answer-text").all_inner_texts()
            assert answers == [a["answer"] for a in expected["answers"]]
            regions = len(expected["images"][0]["regions"])
            assert page.locator("#figures svg rect.region").count() == regions
            assert "model" in page.inner_text("#timings") and page.locator("#layer option").count() == 2
            # the sentence's most attended regions are highlighted; hovering a word, that word's
            attention = expected["attention"]

            def top(weights):
                return sorted(sorted(range(regions), key=lambda j: -weights[j])[:5])

            def highlighted():
                marked = page.locator("#figures svg g:has(rect.region.attended)")
                return sorted(int(marked.nth(i).get_attribute("data-region")) for i in range(marked.count()))

            assert highlighted() == top(attention["region_scores"][-1])
            page.locator("#matrix tbody tr").nth(2).hover()
            assert highlighted() == top(attention["layers"][-1][2])
            # usable on a phone: nothing wider than the screen but the scrollable matrix
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        finally:
            browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
