"""The nonzero region of a scan: its mask and bounding box (nnU-Net v1 ``cropping.py``).

nnU-Net v1 crops every case to the bounding box of the voxels that are nonzero in any channel
(``create_nonzero_mask`` + ``get_bbox_from_mask``) and keeps the mask — with its holes filled
(``scipy.ndimage.binary_fill_holes``) — as the *nonzero region*: the normalisation mask of the ``use_nonzero_mask``
schemes and the ``-1`` region of label maps. :func:`fill_holes` is that hole filling without scipy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nonzero_mask", "fill_holes", "bbox_of", "crop_to_nonzero"]


def _spread_lines(background: np.ndarray, reached: np.ndarray) -> np.ndarray:
    """``(L, n)`` lines: every background run (along the last axis) that holds a reached voxel, whole."""
    starts = background.copy()
    starts[:, 1:] &= ~background[:, :-1]  # a run starts at a background voxel whose predecessor is not background
    run = np.cumsum(starts, axis=None, dtype=np.int64).reshape(background.shape)
    touched = np.zeros(int(run[-1, -1]) + 1, dtype=bool)
    touched[run[reached]] = True
    return background & touched[run]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` with its default (6-connected) structure, in numpy.

    Background voxels that cannot reach the volume's faces through 6-connected background become foreground.
    Implemented as a flood fill from the faces that spreads along whole background runs of one axis at a time,
    revisiting only the lines of an axis that gained reached voxels since that axis was last swept.

    Args:
        mask: ``(Z, Y, X)`` bool.

    Returns:
        ``(Z, Y, X)`` bool, ``mask`` with its holes filled.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"fill_holes expects a (Z, Y, X) mask, got shape {mask.shape}")
    background = ~mask
    reached = np.zeros_like(mask)
    for ax in range(3):  # seeds: background on the faces (scipy: the border counts as background)
        for end in (0, -1):
            face = [slice(None)] * 3
            face[ax] = end
            reached[tuple(face)] = background[tuple(face)]
    if not reached.any():  # no background on the faces: every background voxel is a hole
        return np.ones_like(mask)
    pending = [reached.copy() for _ in range(3)]  # per axis: voxels reached since that axis was last swept
    ax = 0
    while any(p.any() for p in pending):
        todo = np.moveaxis(pending[ax], ax, -1)
        if todo.any():
            i, j = np.nonzero(todo.any(axis=-1))  # the lines along `ax` holding newly reached voxels
            bg, hit = np.moveaxis(background, ax, -1), np.moveaxis(reached, ax, -1)
            before = hit[i, j]
            after = _spread_lines(bg[i, j], before)
            hit[i, j] = after
            added = after & ~before
            for other in range(3):
                view = np.moveaxis(pending[other], ax, -1)
                view[i, j] = False if other == ax else (view[i, j] | added)
        ax = (ax + 1) % 3
    return ~reached


def nonzero_mask(array: np.ndarray) -> np.ndarray:
    """The nonzero region of ``(C, Z, Y, X)``: voxels nonzero in any channel, holes filled (nnU-Net v1
    ``create_nonzero_mask``). Returns ``(Z, Y, X)`` bool."""
    raw = (np.asarray(array) != 0).any(axis=0)
    # holes lie inside the bounding box, and all background outside it reaches the faces: fill only the box
    sl = tuple(slice(a, b) for a, b in bbox_of(raw))
    out = raw.copy()
    out[sl] = fill_holes(raw[sl])
    return out


def bbox_of(mask: np.ndarray) -> list[list[int]]:
    """Bounding box ``[[z0, z1], [y0, y1], [x0, x1]]`` (half-open) of a ``(Z, Y, X)`` mask; the whole volume when
    the mask is empty (nnU-Net v1 fails there; an all-zero scan is kept whole)."""
    if not mask.any():
        return [[0, s] for s in mask.shape]
    bbox = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        bbox.append([int(hit[0]), int(hit[-1]) + 1])
    return bbox


def crop_to_nonzero(array: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """Crop ``(C, Z, Y, X)`` to the bounding box of voxels nonzero in any channel (nnU-Net v1 ``crop_to_nonzero``).

    Returns the cropped array and the box ``[[z0, z1], [y0, y1], [x0, x1]]`` (half-open). An all-zero image is
    kept whole. (Filling holes, as :func:`nonzero_mask` does, never changes the box.)
    """
    bbox = bbox_of((array != 0).any(axis=0))
    sl = tuple(slice(a, b) for a, b in bbox)
    return np.ascontiguousarray(array[(slice(None),) + sl]), bbox
