"""Torch operators that export to one standard ONNX operator each: a torch implementation for eager
runs (the reference every export is verified against) and the ONNX translation the exporter uses.

``littlebook::nms`` is ONNX ``NonMaxSuppression`` (opset 10+): per image and class, the boxes whose
score is above ``score_threshold`` in descending score order, each dropped when it overlaps a kept box
of its class by IoU > ``iou_threshold``, at most ``max_per_class`` kept; the result lists
(image, class, box) index triples, image by image, class by class, in the order kept.
"""
from __future__ import annotations

import numpy as np
import torch
from onnxscript import opset18 as op


@torch.library.custom_op("littlebook::nms", mutates_args=())
def nms(boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_threshold: torch.Tensor,
        score_threshold: torch.Tensor) -> torch.Tensor:
    """boxes (N, B, 4) x1 y1 x2 y2, scores (N, C, B), thresholds () -> selected (M, 3) int64."""
    iou_t, score_t = float(iou_threshold), float(score_threshold)
    box64, score64 = boxes.detach().double().cpu().numpy(), scores.detach().float().cpu().numpy()
    out: list[np.ndarray] = []
    for b in range(box64.shape[0]):
        cls, idx = np.nonzero(score64[b] > score_t)  # candidates (class, box)
        if not len(idx):
            continue
        s = score64[b][cls, idx]
        order = np.lexsort((-s, cls))  # by class, then by descending score
        cls, idx = cls[order], idx[order]
        xy = box64[b][idx]  # (P, 4): corners in either order, as ONNX allows
        lo, hi = np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])
        area = (hi - lo).prod(1)
        inter = (np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None])).clip(0).prod(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (area[:, None] + area[None] - inter)
        over = (iou > iou_t) & (cls[:, None] == cls[None]) & (area[:, None] > 0) & (area[None] > 0)
        keep = np.zeros(len(idx), bool)
        dropped = np.zeros(len(idx), bool)
        kept_per_class: dict[int, int] = {}
        for i in range(len(idx)):
            c = int(cls[i])
            if dropped[i] or kept_per_class.get(c, 0) >= max_per_class:
                continue
            keep[i] = True
            kept_per_class[c] = kept_per_class.get(c, 0) + 1
            dropped |= over[i]
        out.append(np.stack([np.full(keep.sum(), b), cls[keep], idx[keep]], 1))
    result = np.concatenate(out) if out else np.zeros((0, 3), np.int64)
    return torch.from_numpy(result.astype(np.int64)).to(boxes.device)


@nms.register_fake
def _nms_shape(boxes, scores, max_per_class, iou_threshold, score_threshold):
    m = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((m, 3), dtype=torch.int64)


def _nms_onnx(boxes, scores, max_per_class: int, iou_threshold, score_threshold):
    limit = op.Constant(value_ints=[max_per_class])
    return op.NonMaxSuppression(boxes, scores, limit, op.Reshape(iou_threshold, [1]),
                                op.Reshape(score_threshold, [1]))


# what torch.onnx.export(custom_translation_table=...) is given for every export
TRANSLATIONS = {torch.ops.littlebook.nms.default: _nms_onnx}
