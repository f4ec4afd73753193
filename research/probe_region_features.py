"""Learning probe (not a timing): what a feature store's regions tell about the objects they cover.

On a synthetic world, every saved region that covers a ground-truth object (IoU >= 0.5 with
its box in the GQA scene graphs) is labelled with that object's shape and colour; a linear
classifier and a one-hidden-layer MLP are fitted on the regions of GQA train images and
scored on val + testdev images. The detector's own heads (`objects_id`, `attrs_id`) are scored
on the same regions. LXMERT can only ground a word in what its region features carry: a colour
the features do not separate is a "what color is the X?" the downstream model cannot answer,
however well it is pretrained.

Measured on the 2-core CPU box, a 6000-image world (seed 0), the `synth` detector trained 600
steps with three attribute-loss weights, held-out accuracy linear / MLP (chance 0.10 / 0.09),
the detector's own object head, and its box AP on held-out VG images (train-detector):

  attribute loss weight            shape          colour         object head   box AP
  0.5 (Caffe's)                    0.732 / 0.766  0.459 / 0.586  0.620         32.0
  1.0 (the `synth` preset)         0.746 / 0.780  0.746 / 0.817  0.631         32.7
  2.0                              0.663 / 0.713  0.810 / 0.874  0.551         26.3

    python research/probe_region_features.py --data WORLD --features STORE [--steps 300]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou


from pipeline.features.store import FeatureStore
from pipeline.synth.world import COLORS

GQA_SPLITS = ("train", "val", "testdev")


def labelled_regions(world: Path, store: FeatureStore, split: str, shapes: list[str], colours: list[str]):
    """(features (R, D), shape ids (R,), colour ids (R,) (-1: no colour), the detector's
    (object id, attribute id) per region, the object's (name, attributes) per region) of the
    regions covering an object of the split's images."""
    graphs = json.loads((world / "gqa" / f"{split}_sceneGraphs.json").read_text(encoding="utf-8"))
    feats, shape_ids, colour_ids, predicted, truth = [], [], [], [], []
    for image_id, graph in graphs.items():
        key = next((k for k in (image_id, "n" + image_id) if k in store), None)
        if key is None:
            continue
        regions = store.get(key)
        objects = list(graph["objects"].values())
        gt = torch.tensor([[o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]] for o in objects], dtype=torch.float32)
        overlap = box_iou(torch.from_numpy(regions.boxes.astype(np.float32)), gt)
        best_iou, best = overlap.max(dim=1)
        for r in torch.nonzero(best_iou >= 0.5).flatten().tolist():
            obj = objects[int(best[r])]
            colour = [a for a in obj["attributes"] if a in colours]
            feats.append(regions.features[r].astype(np.float32))
            shape_ids.append(shapes.index(obj["name"]))
            colour_ids.append(colours.index(colour[0]) if colour else -1)
            predicted.append((int(regions.objects_id[r]), int(regions.attrs_id[r])))
            truth.append((obj["name"], set(obj["attributes"])))
    return np.stack(feats), np.array(shape_ids), np.array(colour_ids), predicted, truth


def held_out_accuracy(x_train, y_train, x_test, y_test, classes: int, hidden: int | None, steps: int) -> float:
    keep_train, keep_test = y_train >= 0, y_test >= 0
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    xa = torch.from_numpy((x_train[keep_train] - mean) / std)
    xb = torch.from_numpy((x_test[keep_test] - mean) / std)
    ya, yb = torch.from_numpy(y_train[keep_train]), torch.from_numpy(y_test[keep_test])
    torch.manual_seed(0)
    net = (torch.nn.Linear(xa.shape[1], classes) if hidden is None else
           torch.nn.Sequential(torch.nn.Linear(xa.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xa), ya).backward()
        opt.step()
    with torch.no_grad():
        return (net(xb).argmax(1) == yb).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="synthetic world (synth --out)")
    parser.add_argument("--features", required=True, type=Path, help="feature store of its images")
    parser.add_argument("--steps", type=int, default=300, help="full-batch Adam steps per probe")
    args = parser.parse_args()
    summary = json.loads((args.data / "synth_summary.json").read_text(encoding="utf-8"))
    shapes = list(summary["shapes"])
    colours = [a for a in summary["attributes"] if a in COLORS]
    store = FeatureStore(args.features)
    parts = {split: labelled_regions(args.data, store, split, shapes, colours) for split in GQA_SPLITS}
    train = parts["train"]
    test = [np.concatenate([parts[s][i] for s in GQA_SPLITS[1:]]) for i in range(3)]
    print(f"regions covering an object: {len(train[0])} train, {len(test[0])} held out")
    for name, column, classes in (("shape", 1, len(shapes)), ("colour", 2, len(colours))):
        linear = held_out_accuracy(train[0], train[column], test[0], test[column], classes, None, args.steps)
        mlp = held_out_accuracy(train[0], train[column], test[0], test[column], classes, 256, args.steps)
        print(f"{name:7s} linear {linear:.3f}   MLP {mlp:.3f}   (chance {1 / classes:.3f})")
    predicted = [p for s in GQA_SPLITS[1:] for p in parts[s][3]]
    truth = [t for s in GQA_SPLITS[1:] for t in parts[s][4]]
    objects_vocab = [line.split(",")[0] for line in (args.data / "vg" / "objects_vocab.txt").read_text().splitlines()]
    attributes_vocab = [line.split(",")[0] for line in (args.data / "vg" / "attributes_vocab.txt").read_text().splitlines()]
    object_acc = np.mean([objects_vocab[o] == name for (o, _), (name, _) in zip(predicted, truth)])
    attribute_acc = np.mean([attributes_vocab[a] in attrs for (_, a), (_, attrs) in zip(predicted, truth)])
    print(f"detector heads on the held-out regions: object {object_acc:.3f}, top attribute among the "
          f"object's {attribute_acc:.3f}")


if __name__ == "__main__":
    main()
