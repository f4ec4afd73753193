"""Readers of the official annotation formats into small typed records.

Every record's image id is the feature-store `image_id` (the image's file stem; the rule
is in `image_ids.py`). Malformed files stop with `PipelineError` naming the file and the
key path. See `data_root.py` for the directory layout.
"""

from pipeline.readers.data_root import DataRoot, ExpectedFile
from pipeline.readers.records import (Box, Caption, GQAChoices, GQAQuestion, ImageObjects, NLVR2Example,
                                      NLVR2TaskExample, PretrainEntry, QAItem, Relationship, SceneGraph,
                                      SceneObject, TaskExample, VGImage, VQAQuestion)

__all__ = ["DataRoot", "ExpectedFile", "Box", "Caption", "GQAChoices", "GQAQuestion", "ImageObjects",
           "NLVR2Example", "NLVR2TaskExample", "PretrainEntry", "QAItem", "Relationship", "SceneGraph",
           "SceneObject", "TaskExample", "VGImage", "VQAQuestion"]
