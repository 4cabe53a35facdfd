"""Inception inputs that are not images are refused with the caller's own shape in the message."""

import numpy as np
import pytest

from ddim_jax.metrics.features import inception_outputs


def test_a_five_channel_batch_is_reported_with_its_own_shape():
    """4 images of 5 channels used to be reported as "got (1, 8, 8, 5)" (the first image only)."""
    with pytest.raises(ValueError, match=r"C = 1 or 3, got \(4, 8, 8, 5\)"):
        inception_outputs(np.zeros((4, 8, 8, 5), np.uint8), inception=None, progress=False)
