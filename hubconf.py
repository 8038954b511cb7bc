"""torch.hub entrypoints: ``torch.hub.load("yeerwen-uniseg-hub-repo-or-local-path", "uniseg", pretrained=True)``.

Entrypoints (logic in :mod:`uniseg_hub.hub`):

* ``uniseg(pretrained=False, checkpoint=None, **config_overrides)`` — the prompt-driven UniSeg.
* ``uniseg_backbone(pretrained=False, checkpoint=None, num_classes=None, **config_overrides)`` — prompt-free network.
* ``uniseg_encoder(pretrained=False, checkpoint=None, **config_overrides)`` — the encoder (all stage features).

``pretrained=True`` loads the authors' ``uniseg-11task`` weights; ``checkpoint`` takes an official ``.model``, a
``.safetensors`` file, a ``save_pretrained`` folder, a registry name or a Hugging Face Hub id.
"""

dependencies = ["torch", "numpy", "monai", "safetensors", "huggingface_hub", "tqdm"]

from uniseg_hub.hub import uniseg, uniseg_backbone, uniseg_encoder  # noqa: E402,F401
