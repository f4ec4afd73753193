"""`lxmert-pipeline features {info,verify,import-tsv,export-tsv}`."""

from __future__ import annotations

import argparse

HELP = "inspect, verify and convert feature stores (Parquet shards <-> bottom-up-attention TSV)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="images, shards, detector, dims, dtype, size on disk")
    info.add_argument("store", metavar="DIR")
    verify = sub.add_parser("verify", help="check every shard against the manifest checksums, every image id "
                                           "against the other shards, and every value for NaN/inf")
    verify.add_argument("store", metavar="DIR")
    imp = sub.add_parser("import-tsv", help="stream bottom-up-attention TSV files into a feature store")
    imp.add_argument("files", metavar="FILE", nargs="+")
    imp.add_argument("--out", required=True, metavar="DIR")
    imp.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                     help="feature storage dtype (float16 halves the size; float32 keeps every bit)")
    imp.add_argument("--shard-size", type=int, default=1000, metavar="N", help="images per shard")
    imp.add_argument("--skip-bad-lines", action="store_true",
                     help="skip malformed lines and lines with NaN/inf values (recorded in failures.jsonl) "
                          "instead of stopping")
    imp.add_argument("--num-objects", type=int, default=1600, help="object label space of the detector")
    imp.add_argument("--num-attributes", type=int, default=400, help="attribute label space of the detector")
    exp = sub.add_parser("export-tsv", help="write a feature store as a bottom-up-attention TSV (float32)")
    exp.add_argument("store", metavar="DIR")
    exp.add_argument("--out", required=True, metavar="FILE")


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return ""


def run(args: argparse.Namespace) -> int:
    from pipeline import features as F

    if args.action == "info":
        manifest = F.load_manifest(args.store)
        meta = F.StoreMetadata.from_dict(manifest["metadata"])
        failures = F.read_failures(args.store)
        total = sum(s["num_bytes"] for s in manifest["shards"])
        rows = [
            ("images", manifest["num_images"]),
            ("shards", len(manifest["shards"])),
            ("detector", meta.detector),
            ("weights sha256", meta.weights_sha256),
            ("box rule", ", ".join(f"{k}={v}" for k, v in meta.box_rule.items() if k != "sources")),
            ("feature dim", meta.feature_dim),
            ("feature dtype", meta.feature_dtype),
            ("label space", f"{meta.num_objects} objects, {meta.num_attributes} attributes"),
            ("size on disk", _size(total)),
            ("failed images", len(failures)),
            ("format version", meta.format_version),
        ]
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        return 0
    if args.action == "verify":
        problems = F.verify_store(args.store)
        manifest = F.load_manifest(args.store)
        for name, problem in problems:
            print(f"BAD  {name}: {problem}")
        bad = {n for n, _ in problems}
        print(f"{len(manifest['shards']) - len(bad & {s['name'] for s in manifest['shards']})} of "
              f"{len(manifest['shards'])} shards ok" + (f"; {len(bad)} bad" if bad else ""))
        return 1 if problems else 0
    if args.action == "import-tsv":
        from pipeline.features.tsv import import_tsv

        report = import_tsv(args.files, args.out, dtype=args.dtype, shard_size=args.shard_size,
                            skip_bad_lines=args.skip_bad_lines, num_objects=args.num_objects,
                            num_attributes=args.num_attributes)
        print(f"imported {report.images} images into {report.shards} shards at {args.out}")
        if report.bad_lines:
            print(f"skipped {len(report.bad_lines)} bad lines (listed in {args.out}/failures.jsonl):")
            for rec in report.bad_lines[:10]:
                print(f"  {rec['image']}: {rec['reason']}")
        return 0
    if args.action == "export-tsv":
        from pipeline.features.tsv import export_tsv

        n = export_tsv(args.store, args.out)
        print(f"wrote {n} images to {args.out}")
        return 0
    raise AssertionError(args.action)
