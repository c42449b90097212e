"""Samples of a COCO instances file for detection: image, boxes (crowd regions left out) and labels."""
from __future__ import annotations

import numpy as np

from cvengine.data.dataset import Sample, SampleDataset


class CocoDetectionDataset(SampleDataset):
    """Samples of a CocoIndex; training targets exclude crowd regions."""

    def __getitem__(self, i: int) -> Sample:
        image = self.read_checked(i)
        orig_size = image.shape[:2]
        boxes, labels = self.index.targets(i)
        if self.augment is not None:
            out = self.augment_sample(i, image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        if self.resize is not None:
            image, boxes, _ = self.resize(image, boxes)
        return Sample(
            image=np.ascontiguousarray(image),
            image_id=int(self.index.image_ids[i]),
            orig_size=tuple(int(v) for v in orig_size),
            boxes_xyxy_abs=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64).reshape(-1),
            file_name=self.index.file_names[i],
        )
