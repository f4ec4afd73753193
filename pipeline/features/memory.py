"""A feature store held in memory: the regions of a few images extracted on the spot
(`predict`), behind the part of `FeatureStore`'s interface the model inputs read."""

from __future__ import annotations

from typing import Sequence

from pipeline.errors import PipelineError
from pipeline.features.schema import ImageFeatures, StoreMetadata


class MemoryStore:
    def __init__(self, images: Sequence[ImageFeatures], metadata: StoreMetadata):
        self.metadata = metadata
        self._images = {im.image_id: im for im in images}
        for im in images:
            if im.features.shape[1] != metadata.feature_dim:
                raise PipelineError(f"image {im.image_id!r} has {im.features.shape[1]}-dim features, the store "
                                    f"{metadata.feature_dim}")

    @property
    def image_ids(self) -> list[str]:
        return list(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._images

    def get(self, image_id: str) -> ImageFeatures:
        try:
            return self._images[image_id]
        except KeyError:
            raise PipelineError(f"image {image_id!r} is not in this in-memory store") from None

    def get_many(self, image_ids: Sequence[str]) -> list[ImageFeatures]:
        return [self.get(i) for i in image_ids]
