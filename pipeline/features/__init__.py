"""The feature store: Parquet shards of detector outputs, one row per image (docs/store.md)."""

from pipeline.features.manifest import (FAILURES, MANIFEST, ShardReads, append_failures, finalize_store,
                                        load_manifest, read_failures, shard_image_ids, shard_paths, verify_store)
from pipeline.features.schema import FORMAT_VERSION, ImageFeatures, StoreMetadata
from pipeline.features.shard import ShardInfo, read_shard_metadata, shard_name, write_shard
from pipeline.features.store import FeatureStore

__all__ = [
    "FAILURES", "FORMAT_VERSION", "MANIFEST", "FeatureStore", "ImageFeatures", "ShardInfo", "ShardReads",
    "StoreMetadata", "append_failures", "finalize_store", "load_manifest", "read_failures", "read_shard_metadata",
    "shard_name", "shard_image_ids", "shard_paths", "verify_store", "write_shard",
]
