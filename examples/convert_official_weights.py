"""Convert an official UniSeg checkpoint (nnU-Net v1 ``.model`` + ``.model.pkl``) into this library's format.

What it shows:
    * :func:`uniseg_hub.hub.convert_nnunet_v1` — the official files are read without executing pickled code, the
      network is derived from the plans, the weights are renamed by ``checkpoint_filter_fn``, loaded strictly and
      written as a ``save_pretrained`` folder: ``config.json``, ``model.safetensors`` and a model card ``README.md``;
    * :func:`uniseg_hub.from_pretrained` on the folder, with its load report;
    * the round trip: ``to_official_state_dict(model)`` gives back every official tensor bit for bit.

Input: by default the tiny official checkpoint of the test fixtures (made with the official UniSeg code; same
file format as the authors' ``model_final_checkpoint.model``). For the authors' weights, download
``UniSeg_11_Tasks`` (see ``weights/README.md``) and pass its ``model_final_checkpoint.model``.

CPU time: about 3 s (2 cores) for the tiny checkpoint; the 32M-parameter official one takes longer.

Run:  python examples/convert_official_weights.py [CHECKPOINT.model] [--out uniseg_converted]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bundled import REPO_ROOT  # noqa: E402

import uniseg_hub  # noqa: E402
from uniseg_hub.hub import convert_nnunet_v1  # noqa: E402

TINY_OFFICIAL = REPO_ROOT / "tests" / "fixtures" / "uniseg_reference" / "tiny_upstream.model"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(TINY_OFFICIAL), help="official .model (its .pkl next to it)")
    parser.add_argument("--out", default="uniseg_converted", help="output folder (save_pretrained layout)")
    parser.add_argument("--card-lines", type=int, default=25, help="lines of the model card to print")
    args = parser.parse_args(argv)

    folder = convert_nnunet_v1(args.checkpoint, args.out)
    print(f"wrote {sorted(p.name for p in Path(folder).iterdir())} to {folder}")
    card = (Path(folder) / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[-1]  # text after the YAML
    print("\n".join(card.strip().splitlines()[: args.card_lines]), "\n...")

    model = uniseg_hub.from_pretrained(folder)               # strict load; model.load_report says what matched
    print(model.load_report.summary())

    official, _, _ = uniseg_hub.load_nnunet_v1_checkpoint(args.checkpoint)
    back = uniseg_hub.to_official_state_dict(model)
    identical = sorted(k for k in official if k in back and torch.equal(official[k], back[k]))
    print(f"round trip: {len(identical)} of {len(official)} official tensors identical")
    return {"folder": Path(folder), "model": model, "identical": identical, "official_keys": sorted(official)}


if __name__ == "__main__":
    main()
