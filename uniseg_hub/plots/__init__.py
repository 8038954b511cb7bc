"""Figures: the house style (:mod:`.style`, matplotlib) and the PNG preview of a segmentation (:mod:`.preview`)."""
