"""Use the UniSeg encoder (and the whole network) inside a MONAI pipeline with MONAI's ``sliding_window_inference``.

What it shows:
    * MONAI dictionary transforms that implement the weights' preprocessing contract for an MR scan: load, resample
      to ``config.preprocessing.spacing``, crop to the foreground, z-score (``NormalizeIntensityd``);
    * the axis convention: MONAI arrays are ``(C, X, Y, Z)`` (NIfTI voxel order), uniseg_hub/nnU-Net arrays are
      ``(C, Z, Y, X)``; :class:`MonaiAxes` wraps any network so MONAI code can call it unchanged;
    * ``monai.inferers.sliding_window_inference`` over the **encoder**: its predictor returns a tuple of feature
      maps at 1/1 ... 1/8 resolution, which MONAI stitches into whole-volume multi-scale features;
    * the same inferer over the prompt-driven **UniSeg** for one task, scored with ``monai.metrics.DiceMetric``.

MONAI's window placement and Gaussian differ slightly from the official nnU-Net v1 ``predict_3D``; for outputs
identical to the official predictor use :func:`uniseg_hub.inference.sliding_window_inference` (same argument names).

Inputs: the bundled MNI152 T1 with its grey/white-matter maps (nilearn), the demo weights ``uniseg-demo``,
task ``tissue``.

CPU time: about 10 s (2 cores).

Run:  python examples/use_in_monai.py [--weights uniseg-demo] [--task tissue]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.transforms import Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, Spacingd
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bundled import mni152_file  # noqa: E402

import uniseg_hub  # noqa: E402


class MonaiAxes(nn.Module):
    """Call a uniseg_hub network on MONAI ``(B, C, X, Y, Z)`` tensors: permute to ``(B, C, Z, Y, X)`` and back.

    Args:
        net: ``net(x, *args)`` returning a tensor or a list/tuple of tensors in ``(B, K, Z, Y, X)`` order.
        args: extra positional arguments (e.g. a task id) passed on every call.
    """

    def __init__(self, net: nn.Module, *args: Any) -> None:
        super().__init__()
        self.net, self.args = net, args

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.net(x.permute(0, 1, 4, 3, 2), *self.args)
        if isinstance(out, (list, tuple)):
            return tuple(o.permute(0, 1, 4, 3, 2) for o in out)
        return out.permute(0, 1, 4, 3, 2)


def monai_preprocessing(spacing_zyx: Sequence[float]) -> Compose:
    """MONAI transforms for keys ``image`` (T1) and ``gm``/``wm`` (tissue maps) → ``image`` and ``label``."""
    keys = ["image", "gm", "wm"]
    return Compose([
        LoadImaged(keys, reader="NibabelReader"),
        EnsureChannelFirstd(keys),
        Spacingd(keys, pixdim=list(spacing_zyx)[::-1], mode="bilinear"),     # MONAI pixdim is (x, y, z)
        CropForegroundd(keys, source_key="image", allow_smaller=True),       # nonzero box of the scan
        NormalizeIntensityd("image"),                                        # z-score: the MR scheme
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="uniseg-demo", help="UniSeg weights: registry name, folder or .model")
    parser.add_argument("--task", default="tissue", help="task of the weights to segment with")
    parser.add_argument("--sw-batch-size", type=int, default=4)
    args = parser.parse_args(argv)

    model = uniseg_hub.from_pretrained(args.weights)
    cfg = model.config
    data = monai_preprocessing(cfg.preprocessing.spacing)(
        {"image": str(mni152_file("t1")), "gm": str(mni152_file("gm")), "wm": str(mni152_file("wm"))})
    image = data["image"].as_tensor()[None]                                  # (1, 1, X, Y, Z)
    gm, wm = data["gm"].as_tensor(), data["wm"].as_tensor()
    label = torch.stack([(255 - gm - wm).clamp_min(0), gm, wm]).argmax(0)[None]  # (1, 1, X, Y, Z): 0 other, 1 GM, 2 WM
    roi_xyz = list(cfg.patch_size)[::-1]
    print(f"MONAI image {tuple(image.shape)} (B, C, X, Y, Z), window {roi_xyz}")

    with torch.no_grad():
        features = sliding_window_inference(image, roi_xyz, args.sw_batch_size, MonaiAxes(model.encoder),
                                            overlap=0.5, mode="gaussian")
        for info, f in zip(model.encoder.feature_info, features):
            print(f"encoder {info['module']}: whole-volume features {tuple(f.shape)} ({info['num_chs']} channels)")
        tid = cfg.task_index(args.task)
        logits = sliding_window_inference(image, roi_xyz, args.sw_batch_size, MonaiAxes(model, tid),
                                          overlap=0.5, mode="gaussian")
    k = cfg.tasks[tid].num_classes
    pred = logits[:, :k].argmax(1, keepdim=True)                             # class restriction to the task
    dice = DiceMetric(include_background=False, num_classes=k)(pred, label)[0]
    for c, d in enumerate(dice.tolist(), start=1):
        print(f"task {args.task!r} class {cfg.tasks[tid].labels.get(str(c), c)}: Dice {d:.3f} (MONAI DiceMetric)")
    return {"features": features, "image": image, "label": label, "pred": pred, "dice": dice.tolist(), "model": model}


if __name__ == "__main__":
    main()
