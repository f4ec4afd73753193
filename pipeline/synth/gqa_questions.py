"""GQA-style question families about one scene.

A family is one fact asked several ways: "What color is the circle?" (open), "Is the circle
red?" (yes), "Is the circle blue?" (no), "Is the circle red or blue?" (choose). Knowing the
fact answers every member, so each member's `entailed` list names the others it determines
and a correct model is consistent. The open member's subject is picked so answers balance
within its `groups.global` group; one binary member per family is marked balanced, picked
to keep yes/no even.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.synth.balance import AnswerBalancer
from pipeline.synth.language import article
from pipeline.synth.world import Obj, Scene, WorldConfig, left_of

ATTRIBUTE_KINDS = ("color", "size", "pattern")
_GLOBAL_GROUP = {"color": "color", "size": "size", "pattern": "material", "shape": "shape", "rel": "position"}


@dataclass
class GQAItem:
    question: str
    answer: str
    full_answer: str
    structural: str          # query | verify | logical | choose | compare
    semantic_type: str       # obj | attr | rel | cat | global
    detailed: str
    group_global: str | None
    group_local: str
    program: list[dict]
    valid: list[str]
    plausible: list[str]
    balanced: bool = False
    entails: list[int] = field(default_factory=list)   # indices within the family
    question_id: str = ""


def _select(obj_id: str, shape: str) -> dict:
    return {"operation": "select", "argument": f"{shape} ({obj_id})", "dependencies": []}


def _values(cfg: WorldConfig, kind: str) -> tuple[str, ...]:
    return {"color": cfg.colors, "size": cfg.sizes, "pattern": cfg.patterns}[kind]


def _attribute_family(rng, cfg: WorldConfig, obj: Obj, oid: str, kind: str, scene: Scene) -> list[GQAItem]:
    value = getattr(obj, kind)
    others = [v for v in _values(cfg, kind) if v != value]
    other = others[int(rng.integers(len(others)))]
    s = obj.shape
    sel = _select(oid, s)
    in_scene = sorted({getattr(o, kind) for o in scene.objects} | {value})
    a, b = (value, other) if rng.random() < 0.5 else (other, value)
    items = [
        GQAItem(f"What {kind} is the {s}?", value, f"The {s} is {value}.", "query", "attr", f"query{kind.capitalize()}",
                _GLOBAL_GROUP[kind], f"10q-{s}_{kind}",
                [sel, {"operation": f"query", "argument": kind, "dependencies": [0]}],
                list(_values(cfg, kind)), in_scene),
        GQAItem(f"Is the {s} {value}?", "yes", f"Yes, the {s} is {value}.", "verify", "attr", f"verify{kind.capitalize()}",
                None, f"06-{s}_{value}", [sel, {"operation": f"verify {kind}", "argument": value, "dependencies": [0]}],
                ["yes", "no"], ["yes", "no"]),
        GQAItem(f"Is the {s} {other}?", "no", f"No, the {s} is {value}.", "verify", "attr", f"verify{kind.capitalize()}",
                None, f"06-{s}_{other}", [sel, {"operation": f"verify {kind}", "argument": other, "dependencies": [0]}],
                ["yes", "no"], ["yes", "no"]),
        GQAItem(f"Is the {s} {a} or {b}?", value, f"The {s} is {value}.", "choose", "attr", f"choose{kind.capitalize()}",
                _GLOBAL_GROUP[kind], f"10c-{s}_{kind}",
                [sel, {"operation": f"choose {kind}", "argument": f"{a}|{b}", "dependencies": [0]}],
                [a, b], [a, b]),
    ]
    # the open, the yes and the choose question each pin the value, so each entails all others;
    # "is it <other>? no" does not pin it, so it entails nothing
    for i in (0, 1, 3):
        items[i].entails = [j for j in range(4) if j != i]
    return items


def _relation_family(rng, a: Obj, ida: str, b: Obj, idb: str) -> list[GQAItem]:
    """`a` is left of `b`; the open question asks about either, so "left" and "right" balance."""
    if rng.random() < 0.5:
        return _relation_family_right(rng, a, ida, b, idb)
    sa, sb = _select(ida, a.shape), _select(idb, b.shape)
    rel = lambda x, y, xid, yid, word: [_select(xid, x.shape), _select(yid, y.shape),
                                        {"operation": "verify rel", "argument": f"{y.shape},{word},s ({yid})",
                                         "dependencies": [0, 1]}]
    first, second = ("left", "right") if rng.random() < 0.5 else ("right", "left")
    items = [
        GQAItem(f"Is the {a.shape} to the {first} or to the {second} of the {b.shape}?", "left",
                f"The {a.shape} is to the left of the {b.shape}.", "choose", "rel", "chooseRel", _GLOBAL_GROUP["rel"],
                f"10c-{a.shape}_{b.shape}_position",
                [sa, sb, {"operation": "choose rel", "argument": f"{b.shape},to the left of|to the right of,s ({idb})",
                          "dependencies": [0, 1]}], ["left", "right"], ["left", "right"]),
        GQAItem(f"Is the {a.shape} to the left of the {b.shape}?", "yes", f"Yes, the {a.shape} is to the left of the {b.shape}.",
                "verify", "rel", "verifyRel", None, f"06-{a.shape}_to the left of_{b.shape}",
                rel(a, b, ida, idb, "to the left of"), ["yes", "no"], ["yes", "no"]),
        GQAItem(f"Is the {b.shape} to the left of the {a.shape}?", "no", f"No, the {b.shape} is to the right of the {a.shape}.",
                "verify", "rel", "verifyRel", None, f"06-{b.shape}_to the left of_{a.shape}",
                rel(b, a, idb, ida, "to the left of"), ["yes", "no"], ["yes", "no"]),
        GQAItem(f"Is the {b.shape} to the right of the {a.shape}?", "yes", f"Yes, the {b.shape} is to the right of the {a.shape}.",
                "verify", "rel", "verifyRel", None, f"06-{b.shape}_to the right of_{a.shape}",
                rel(b, a, idb, ida, "to the right of"), ["yes", "no"], ["yes", "no"]),
    ]
    # the boxes are clearly apart, so every member pins the same fact
    for i in range(4):
        items[i].entails = [j for j in range(4) if j != i]
    return items


def _relation_family_right(rng, a: Obj, ida: str, b: Obj, idb: str) -> list[GQAItem]:
    # the mirror image of _relation_family: b is right of a, asked about b
    sa, sb = _select(ida, a.shape), _select(idb, b.shape)
    first, second = ("left", "right") if rng.random() < 0.5 else ("right", "left")
    verify = lambda x, xid, y, yid, word: [_select(xid, x.shape), _select(yid, y.shape),
                                           {"operation": "verify rel", "argument": f"{y.shape},{word},s ({yid})",
                                            "dependencies": [0, 1]}]
    items = [
        GQAItem(f"Is the {b.shape} to the {first} or to the {second} of the {a.shape}?", "right",
                f"The {b.shape} is to the right of the {a.shape}.", "choose", "rel", "chooseRel", _GLOBAL_GROUP["rel"],
                f"10c-{b.shape}_{a.shape}_position",
                [sb, sa, {"operation": "choose rel", "argument": f"{a.shape},to the left of|to the right of,s ({ida})",
                          "dependencies": [0, 1]}], ["left", "right"], ["left", "right"]),
        GQAItem(f"Is the {b.shape} to the right of the {a.shape}?", "yes", f"Yes, the {b.shape} is to the right of the {a.shape}.",
                "verify", "rel", "verifyRel", None, f"06-{b.shape}_to the right of_{a.shape}",
                verify(b, idb, a, ida, "to the right of"), ["yes", "no"], ["yes", "no"]),
        GQAItem(f"Is the {a.shape} to the right of the {b.shape}?", "no", f"No, the {a.shape} is to the left of the {b.shape}.",
                "verify", "rel", "verifyRel", None, f"06-{a.shape}_to the right of_{b.shape}",
                verify(a, ida, b, idb, "to the right of"), ["yes", "no"], ["yes", "no"]),
        GQAItem(f"Is the {a.shape} to the left of the {b.shape}?", "yes", f"Yes, the {a.shape} is to the left of the {b.shape}.",
                "verify", "rel", "verifyRel", None, f"06-{a.shape}_to the left of_{b.shape}",
                verify(a, ida, b, idb, "to the left of"), ["yes", "no"], ["yes", "no"]),
    ]
    for i in range(4):
        items[i].entails = [j for j in range(4) if j != i]
    return items


def _exist_family(scene: Scene, cfg: WorldConfig, color: str, shape: str) -> list[GQAItem]:
    present = scene.count(shape=shape, color=color) > 0
    ans = "yes" if present else "no"
    items = [GQAItem(f"Is there {article(color)} {color} {shape}?", ans,
                     f"{'Yes' if present else 'No'}, there is {'a' if present else 'no'} {color} {shape}.",
                     "verify", "obj", "existAttr", None, f"06-{shape}_{color}_exist",
                     [{"operation": "select", "argument": shape, "dependencies": []},
                      {"operation": "filter color", "argument": color, "dependencies": [0]},
                      {"operation": "exist", "argument": "?", "dependencies": [1]}], ["yes", "no"], ["yes", "no"])]
    if present:   # a red circle implies a circle
        items.append(GQAItem(f"Is there {article(shape)} {shape}?", "yes", f"Yes, there is {article(shape)} {shape}.",
                             "verify", "obj", "exist", None, f"06-{shape}_exist",
                             [{"operation": "select", "argument": shape, "dependencies": []},
                              {"operation": "exist", "argument": "?", "dependencies": [0]}], ["yes", "no"], ["yes", "no"]))
        items[0].entails = [1]
    return items


def _shape_family(cfg: WorldConfig, obj: Obj, oid: str, scene: Scene) -> list[GQAItem]:
    return [GQAItem(f"What shape is the {obj.color} object?", obj.shape, f"The {obj.color} object is {article(obj.shape)} {obj.shape}.",
                    "query", "cat", "queryShape", _GLOBAL_GROUP["shape"], f"10q-{obj.color}_shape",
                    [{"operation": "select", "argument": "object", "dependencies": []},
                     {"operation": "filter color", "argument": obj.color, "dependencies": [0]},
                     {"operation": "query", "argument": "shape", "dependencies": [1]}],
                    list(cfg.shapes), sorted({o.shape for o in scene.objects}))]


def families(rng: np.random.Generator, scene: Scene, object_ids: list[str], cfg: WorldConfig,
             balancer: AnswerBalancer, n: int) -> list[list[GQAItem]]:
    """Up to `n` families about `scene`; `object_ids[k]` is the scene-graph id of object k."""
    ids = {id(o): oid for o, oid in zip(scene.objects, object_ids)}
    candidates: dict[str, list] = {}
    for o in scene.objects:
        if scene.count(shape=o.shape) == 1:
            for kind in ATTRIBUTE_KINDS:
                candidates.setdefault(kind, []).append((getattr(o, kind), (kind, o)))
        if scene.count(color=o.color) == 1:
            candidates.setdefault("shape", []).append((o.shape, ("shape", o)))
    uniques = [o for o in scene.objects if scene.count(shape=o.shape) == 1]
    rels = [(a, b) for a in uniques for b in uniques if a is not b and left_of(a, b)]
    if rels:
        candidates["rel"] = [("left", ("rel", p)) for p in rels]
    present = sorted({(o.color, o.shape) for o in scene.objects})
    absent = sorted({(c, o.shape) for o in scene.objects for c in cfg.colors} - set(present))
    candidates["exist"] = [("yes", ("exist", p)) for p in present] + [("no", ("exist", p)) for p in absent]

    out = []
    kinds = sorted(candidates)
    for i in rng.permutation(len(kinds))[:n]:
        kind = kinds[i]
        _, (k, payload) = balancer.pick(rng, f"gqa-{kind}", candidates[kind])
        if k in ATTRIBUTE_KINDS:
            fam = _attribute_family(rng, cfg, payload, ids[id(payload)], k, scene)
        elif k == "shape":
            fam = _shape_family(cfg, payload, ids[id(payload)], scene)
        elif k == "rel":
            a, b = payload
            fam = _relation_family(rng, a, ids[id(a)], b, ids[id(b)])
        else:
            fam = _exist_family(scene, cfg, *payload)
        _mark_balanced(rng, fam, balancer)
        out.append(fam)
    return out


def _mark_balanced(rng, family: list[GQAItem], balancer: AnswerBalancer) -> None:
    for item in family:
        if item.structural in ("query", "choose"):
            item.balanced = True   # their subject was picked by the balancer
    # "is there a circle?" only exists when the answer is yes: never balanced, only entailed
    binary = [it for it in family if it.structural == "verify" and it.detailed != "exist"]
    if binary:
        key = f"gqa-balanced-{binary[0].detailed}"
        picked = balancer.pick(rng, key, [(it.answer, it) for it in binary])
        picked[1].balanced = True
