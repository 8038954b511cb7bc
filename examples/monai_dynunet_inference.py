"""Run UniSeg weights as a plain MONAI ``DynUNet``: MONAI transforms, MONAI's ``sliding_window_inference``, MONAI metrics.

What it shows:
    * the paper's transfer of the embedded demo UniSeg to a prompt-free backbone
      (``from_upstream("uniseg-demo", num_classes=3, strategy="official")``), its heads taken from the demo's
      ``tissue`` task so it segments grey and white matter without fine-tuning;
    * :func:`uniseg_hub.interop.to_dynunet` with ``axes="xyz"``: a ``monai.networks.nets.DynUNet`` that takes
      MONAI-loaded ``(B, C, X, Y, Z)`` tensors directly (kernels, strides and weights reversed, exactly), holding the
      same weights — conv biases dropped because instance norm cancels them;
    * a MONAI bundle-style pipeline on a real scan: ``LoadImaged`` → ``Spacingd`` (the weights' spacing) →
      ``CropForegroundd`` → ``NormalizeIntensityd`` (the MR z-score) → ``monai.inferers.sliding_window_inference``
      over the DynUNet → ``DiceMetric`` against the template's tissue maps, and the label map written with
      ``SaveImage`` (on the resampled, cropped grid, with its affine);
    * that the DynUNet is the UniSeg network: the same MONAI sliding window over the uniseg_hub backbone (axes
      permuted) gives the same logits;
    * :func:`uniseg_hub.interop.save_dynunet_bundle`: ``configs/inference.json`` (``network_def``) +
      ``models/model.pt``, read back by ``monai.bundle.ConfigParser``.

Inputs: the MNI152 T1 bundled with nilearn (197x233x189 at 1 mm) and its grey/white-matter maps; the demo weights
in ``uniseg_hub/registry/uniseg-demo`` (package data, no download).

CPU time: about 10 s (2 cores).

Run:  python examples/monai_dynunet_inference.py [--out-dir dynunet_out] [--sw-batch-size 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd,
                              SaveImage, Spacingd)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bundled import mni152_file  # noqa: E402

import uniseg_hub  # noqa: E402
from uniseg_hub.models.adapters import from_upstream  # noqa: E402
from uniseg_hub.interop import load_dynunet_bundle, save_dynunet_bundle, to_dynunet  # noqa: E402

DEMO = "uniseg-demo"  # the demo weights' registry name (package data)


def tissue_backbone(weights: str | Path = DEMO) -> uniseg_hub.UniSegBackbone:
    """The demo UniSeg transferred to a backbone (official strategy) with the ``tissue`` task's heads."""
    upstream = uniseg_hub.from_pretrained(str(weights))
    backbone = from_upstream(str(weights), num_classes=3, strategy="official", task_name="tissue", modalities=["MR"])
    with torch.no_grad():  # class c of task "tissue" is output channel c of the upstream heads
        for head, up in zip(backbone.decoder.heads, upstream.decoder.heads):
            head.weight.copy_(up.weight[:3])
    return backbone.eval()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=None, help="write the label map and the DynUNet bundle here "
                                                        "(default: a temporary folder)")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward pass")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="dynunet_"))

    backbone = tissue_backbone()
    cfg = backbone.config
    net = to_dynunet(backbone, axes="xyz").eval()                  # takes MONAI's (B, C, X, Y, Z)
    print(f"DynUNet: kernels {net.kernel_size}, strides {net.strides}, filters {list(net.filters)}")

    keys = ["image", "gm", "wm"]
    data = Compose([
        LoadImaged(keys, reader="NibabelReader"),
        EnsureChannelFirstd(keys),
        Spacingd(keys, pixdim=list(cfg.preprocessing.spacing)[::-1], mode="bilinear"),   # MONAI pixdim: (x, y, z)
        CropForegroundd(keys, source_key="image", allow_smaller=True),
        NormalizeIntensityd("image"),                                                     # z-score: the MR scheme
    ])({"image": str(mni152_file("t1")), "gm": str(mni152_file("gm")), "wm": str(mni152_file("wm"))})
    image = data["image"][None]                                    # (1, 1, X, Y, Z) MetaTensor
    gm, wm = data["gm"].as_tensor(), data["wm"].as_tensor()
    label = torch.stack([(255 - gm - wm).clamp_min(0), gm, wm]).argmax(0)[None]
    roi_xyz = list(cfg.patch_size)[::-1]

    with torch.no_grad():
        logits = sliding_window_inference(image, roi_xyz, args.sw_batch_size, net, overlap=0.5, mode="gaussian")

        def uniseg_xyz(x: torch.Tensor) -> torch.Tensor:               # the uniseg_hub network, MONAI axes
            return backbone(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2)

        reference = sliding_window_inference(image.as_tensor(), roi_xyz, args.sw_batch_size, uniseg_xyz,
                                             overlap=0.5, mode="gaussian")
    diff = float((logits.as_tensor() - reference).abs().max())
    print(f"MONAI sliding window over {tuple(image.shape)}: DynUNet vs uniseg_hub logits max abs difference {diff:.2e}")
    pred = logits.argmax(1, keepdim=True)
    dice = DiceMetric(include_background=False, num_classes=3)(pred.as_tensor(), label)[0].tolist()
    print(f"Dice vs the template's tissue maps: grey matter {dice[0]:.3f}, white matter {dice[1]:.3f}")

    SaveImage(output_dir=str(out_dir), output_postfix="tissue", separate_folder=False, resample=False,
              output_dtype="uint8", print_log=False)(pred[0].to(torch.uint8))
    label_file = next(out_dir.glob("*_tissue.nii.gz"))
    bundle, _ = save_dynunet_bundle(backbone, out_dir / "dynunet_bundle", axes="xyz")
    reloaded = load_dynunet_bundle(bundle)
    with torch.no_grad():
        x = image.as_tensor()[..., : roi_xyz[0], : roi_xyz[1], : roi_xyz[2]]
        bundle_diff = float((reloaded(x) - net(x)).abs().max())
    print(f"label map {label_file}; bundle {bundle} (ConfigParser reload differs by {bundle_diff:.1e})")
    return {"net": net, "backbone": backbone, "image": image, "label": label, "logits": logits, "pred": pred,
            "dice": dice, "max_abs_diff": diff, "bundle": bundle, "bundle_diff": bundle_diff,
            "label_file": label_file}


if __name__ == "__main__":
    main()
