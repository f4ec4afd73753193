"""The demo's pictures, drawn from its runs (see workflows/demo.py for the layout)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _label_names(store):
    from detector.config import DetectorConfig

    cfg = DetectorConfig.from_dict(store.metadata.detector_config)
    return cfg.object_names(), cfg.attribute_names()


def draw_detections(world: Path, store, out: Path, count: int = 6) -> Path:
    """Validation images with the regions the trained detector saved."""
    from pipeline.images import decode_image
    from pipeline.pictures.canvas import pyplot, save_figure
    from pipeline.pictures.detections import draw_regions
    from pipeline.readers import DataRoot

    root = DataRoot(world)
    objects, attributes = _label_names(store)
    ids = sorted(i for i in store.image_ids if i.startswith("COCO_val2014"))[:count] or store.image_ids[:count]
    plt = pyplot()
    cols = 3
    rows = (len(ids) + cols - 1) // cols
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    for ax, image_id in zip(axes.flat, ids):
        draw_regions(decode_image(root.image_path(image_id)), store.get(image_id), objects, attributes, None,
                     top=6, title=image_id, ax=ax)
    for ax in list(axes.flat)[len(ids):]:
        ax.set_axis_off()
    figure.suptitle("regions saved by the trained detector (6 most confident per image)", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, out)


def pick_shown_question(questions, store, objects: list[str], limit: int = 300):
    """The question the attention picture shows: among the first `limit` "what color ..."
    questions, the one whose named object the detector saved most confidently (a picture of
    boxes on empty background explains nothing); the first question when none names one.
    Chosen by the detections only, never by whether the model answers it right."""
    best, best_conf = None, 0.0
    for q in [q for q in questions if q.sentence.lower().startswith("what color")][:limit]:
        sentence = " " + q.sentence.lower().rstrip("?") + " "
        regions = store.get(q.image_id)
        conf = max((float(c) for o, c in zip(regions.objects_id, regions.objects_conf)
                    if 0 <= o < len(objects) and f" {objects[o].lower()} " in sentence), default=0.0)
        if conf > best_conf:
            best, best_conf = q, conf
    return best or (questions[0] if questions else None)


def draw_question_attention(world: Path, run: Path, store, out: Path) -> Path | None:
    """A validation VQA question answered by the pretrained + fine-tuned model, with the
    regions its words attend to in the last cross-modality layer."""
    from pipeline.finetune.ask import ask
    from pipeline.finetune.predict import load_finetuned
    from pipeline.finetune.splits import read_vqa_split
    from pipeline.images import decode_image
    from pipeline.pictures.attention import draw_attention
    from pipeline.readers import DataRoot

    loaded = load_finetuned(run)
    objects, attributes = _label_names(store)
    chosen = pick_shown_question(read_vqa_split(world, "val2014"), store, objects)
    if chosen is None:
        return None
    regions = store.get(chosen.image_id)
    reply = ask(loaded, chosen.sentence, [regions], store.metadata, top=3)
    names = [f"{attributes[a]} {objects[o]}" for o, a in zip(regions.objects_id, regions.attrs_id)]
    answer, prob = reply.answers[0]
    title = f"Q: {chosen.sentence}   predicted: {answer} ({prob:.2f})   annotators: {chosen.answer}"
    image = decode_image(DataRoot(world).image_path(chosen.image_id))
    # every region of the synth detector's 6 (a store with more shows the 8 most attended)
    return draw_attention(image, regions.boxes, reply.attention, out, top=8, title=title, region_names=names)


def draw_demo_pictures(out: Path, finetune_runs: dict[str, dict[str, Path]]) -> dict[str, str]:
    """Every picture of the demo; a picture that cannot be drawn is logged, never fatal.
    `finetune_runs`: {task: {variant: run directory}}, VQA's "pretrained" among them."""
    from pipeline.features import FeatureStore
    from pipeline.pictures.curves import plot_training_curves

    pictures = out / "pictures"
    runs = out / "runs"
    store = FeatureStore(runs / "features")
    jobs = {
        "detections": lambda: draw_detections(out / "world", store, pictures / "detections.png"),
        "detector_losses": lambda: plot_training_curves({"detector": runs / "detector"},
                                                        pictures / "detector_losses.png",
                                                        title="detector training (box AP on held-out images)"),
        "pretrain_losses": lambda: plot_training_curves({"pretrain": runs / "pretrain"},
                                                        pictures / "pretrain_losses.png",
                                                        title="pretraining losses per task"),
        "cross_attention": lambda: draw_question_attention(out / "world",
                                                           finetune_runs["vqa"]["pretrained"],
                                                           store, pictures / "cross_attention.png"),
    }
    for task, variants in finetune_runs.items():
        jobs[f"finetune_{task}"] = (lambda task=task, variants=variants: plot_training_curves(
            variants, pictures / f"finetune_{task}.png", title=f"{task} fine-tuning: the three variants"))
    drawn = {}
    for name, job in jobs.items():
        try:
            path = job()
        except Exception as err:  # noqa: BLE001 - a picture is a nicety; the results stand without it
            log.warning("picture %s not drawn: %s: %s", name, type(err).__name__, err)
            continue
        if path is not None:
            drawn[name] = str(path)
    return drawn
