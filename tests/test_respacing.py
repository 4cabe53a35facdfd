"""guided-diffusion's timestep respacing (``respace.space_timesteps``) as ``timestep_sequence``
kinds ``"ddim"`` and ``"respace[:c1,c2,...]"``: the same steps for many (T, S) and section counts."""

import numpy as np
import pytest

from ddim_jax.schedules import timestep_sequence

respace = pytest.importorskip("guided_diffusion.respace")


def _reference(num_timesteps, spelling):
    return np.asarray(sorted(respace.space_timesteps(num_timesteps, spelling)))[::-1]


@pytest.mark.parametrize("num_timesteps", [1, 2, 7, 10, 50, 99, 100, 250, 1000, 4000])
def test_ddim_stride_matches_space_timesteps_for_every_S(num_timesteps):
    """Every S of T: the same steps, or both refuse (no integer stride gives exactly S)."""
    for num_steps in range(1, num_timesteps + 1) if num_timesteps <= 250 else (*range(1, 60), 100, 250, 500, 999):
        try:
            expected = _reference(num_timesteps, f"ddim{num_steps}")
        except ValueError:
            with pytest.raises(ValueError, match="integer stride"):
                timestep_sequence(num_steps, num_timesteps, "ddim")
            continue
        np.testing.assert_array_equal(timestep_sequence(num_steps, num_timesteps, "ddim"), expected)


def test_ddim_differs_from_leading_where_S_does_not_divide_T():
    """ddim25 of T = 1000 is the leading stride; ddim30 is stride 34 (30 steps), leading's is 33."""
    np.testing.assert_array_equal(timestep_sequence(25, 1000, "ddim"), timestep_sequence(25, 1000, "leading"))
    assert timestep_sequence(30, 1000, "ddim")[-2] == 34
    assert timestep_sequence(30, 1000, "leading")[-2] == 33


@pytest.mark.parametrize("num_timesteps", [1, 3, 10, 37, 100, 1000, 4000])
def test_one_section_matches_space_timesteps_for_every_S(num_timesteps):
    for num_steps in range(1, num_timesteps + 1) if num_timesteps <= 100 else range(1, num_timesteps + 1, 7):
        np.testing.assert_array_equal(timestep_sequence(num_steps, num_timesteps, "respace"),
                                      _reference(num_timesteps, str(num_steps)))


@pytest.mark.parametrize("counts", [[10, 15, 20], [1, 1], [3, 1, 4, 1, 5], [7, 7, 7, 7], [1, 50, 2], [100, 33]])
@pytest.mark.parametrize("num_timesteps", [100, 301, 1000, 1003])
def test_section_counts_match_space_timesteps(counts, num_timesteps):
    """The same steps, or both refuse (a section of fewer steps than its count)."""
    spelling = ",".join(map(str, counts))
    try:
        _reference(num_timesteps, spelling)
    except ValueError:
        with pytest.raises(ValueError):
            timestep_sequence(sum(counts), num_timesteps, f"respace:{spelling}")
        return
    np.testing.assert_array_equal(timestep_sequence(sum(counts), num_timesteps, f"respace:{spelling}"),
                                  _reference(num_timesteps, spelling))


@pytest.mark.parametrize("kind, num_steps, message", [
    ("respace:10,15", 20, "sum to 25"),
    ("respace:10,x", 10, "comma-separated integers"),
    ("respace:0,5", 5, "at least 1"),
    ("respace:60,1", 61, "section of 50"),
    ("ddim", 99, "integer stride"),
])
def test_bad_respacing_is_one_clear_error(kind, num_steps, message):
    with pytest.raises(ValueError, match=message):
        timestep_sequence(num_steps, 100, kind)
