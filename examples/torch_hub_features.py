"""Load the UniSeg encoder with ``torch.hub.load`` and extract multi-scale features of a real brain MRI.

What it shows:
    * ``torch.hub.load(repo, "uniseg_encoder", source="local", checkpoint=...)`` — the encoder alone, with its
      ``load_report`` (encoder tensors loaded strictly, prompt/decoder listed as dropped);
    * the weights' preprocessing contract (``encoder.config.preprocessing``: spacing, MR z-score) applied to a scan
      with :func:`uniseg_hub.preprocessing.preprocess`, then padded to a multiple of the total stride;
    * ``encoder(x)`` → one feature map per stage, bottleneck last, described by ``encoder.feature_info``.

Inputs: the bundled MNI152 T1 (nilearn) and the demo weights ``uniseg-demo``; any NIfTI scan and any weights
(registry name, ``save_pretrained`` folder, official ``.model``) work via ``--scan`` / ``--weights``.

CPU time: about 5 s (2 cores), most of it importing torch and resampling the 1 mm scan to 3 mm.

Run:  python examples/torch_hub_features.py [--weights uniseg-demo] [--scan T1.nii.gz] [--modality MR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from monai.transforms import DivisiblePad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bundled import REPO_ROOT, mni152_file  # noqa: E402

from uniseg_hub.preprocessing import load_image, preprocess  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="uniseg-demo", help="registry name, folder or official .model")
    parser.add_argument("--scan", default=None, help="NIfTI scan (default: the bundled MNI152 T1)")
    parser.add_argument("--modality", default="MR", help="modality of the scan in the preprocessing contract")
    args = parser.parse_args(argv)

    encoder = torch.hub.load(str(REPO_ROOT), "uniseg_encoder", source="local", checkpoint=args.weights, trust_repo=True)
    print(encoder.load_report.summary())

    image = load_image(args.scan or mni152_file("t1"))                       # (C, Z, Y, X) + spacing, affine
    pre = preprocess(image, [args.modality], encoder.config.preprocessing)   # crop, resample, normalise
    x = DivisiblePad(k=encoder.config.divisor)(pre.data).as_tensor()[None]  # (1, C, D, H, W), multiple of stride
    print(f"scan {tuple(image.array.shape[1:])} at {image.spacing} mm -> input {tuple(x.shape)} at "
          f"{pre.target_spacing} mm")

    with torch.no_grad():
        features = encoder(x)
    for info, f in zip(encoder.feature_info, features):
        print(f"{info['module']:>9}: {tuple(f.shape)}  channels {info['num_chs']}, reduction {info['reduction']}")
    return {"input": x, "features": features, "feature_info": encoder.feature_info, "encoder": encoder}


if __name__ == "__main__":
    main()
