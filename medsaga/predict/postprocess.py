"""Clean-up of predicted label maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 26-connectivity: voxels that touch by a corner belong together. Thin oblique structures
# (vessels, a kidney's pole cut at an angle) would otherwise break into pieces and lose all but one.
_FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Keep, for every nonzero label, only its largest 3-D connected component (26-connected).

    Args:
        labels: ``(I, J, K)`` integer label map; 0 is background.

    Returns:
        A new array, same shape and dtype: voxels of the smaller components become background (0),
        not another class (the model gave them this class; it said nothing about a second choice).
        Equal-sized largest components: the first in memory order is kept.
    """
    out = labels.copy()
    # One pass finds every label's bounding box; each label is then labelled inside its own box
    # only, so many small classes on a large grid cost little more than one pass over the volume.
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:  # value absent
            continue
        mask = labels[box] == value
        components, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())  # sizes[n]: voxels of component n; 0 is "not this label"
        sizes[0] = 0
        out[box][mask & (components != int(sizes.argmax()))] = 0
    return out
