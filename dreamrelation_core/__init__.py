"""DreamRelation core: relation LoRA triplet training for video DiTs (arXiv 2503.07602). Never imports comfy."""

__version__ = "0.1.0"
