"""The environment wrapper: frame preprocessing."""

import numpy as np
import pytest

from worldmodels.env import preprocess


def test_preprocess_crops_hud_and_resizes():
    frame = np.zeros((96, 96, 3), np.uint8)
    frame[84:] = 255  # the HUD rows must not leak into the model's frame
    out = preprocess(frame)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out.max() == 0
    with pytest.raises(ValueError, match="96, 96, 3"):
        preprocess(np.zeros((96, 96), np.uint8))
