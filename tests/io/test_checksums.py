"""Tree and JSON checksums: every part of what they cover changes the digest (key path, dtype,
shape, bytes, structure), and nothing else does."""

import jax.numpy as jnp
import numpy as np

from ddim_jax.io.checksums import json_checksum, tree_checksum

A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = -A


def test_same_tree_same_digest_whatever_the_array_type():
    tree = {"conv": {"kernel": A, "bias": B[0]}}
    assert tree_checksum(tree) == tree_checksum({"conv": {"kernel": jnp.asarray(A), "bias": jnp.asarray(B[0])}})


def test_the_key_path_is_part_of_the_digest():
    """Same leaves in the same flattening order under other names, or same-shape leaves swapped
    between two names: a restore that put a tree's arrays under the wrong names must not verify."""
    base = {"a": A, "b": B}
    assert tree_checksum(base) != tree_checksum({"a": B, "b": A})          # same-shape leaves swapped
    assert tree_checksum(base) != tree_checksum({"b": A, "c": B})          # renamed, same order
    assert tree_checksum({"x": {"kernel": A}}) != tree_checksum({"y": {"kernel": A}})
    assert tree_checksum({"kernel": A}) != tree_checksum({"bias": A})
    assert tree_checksum({"a": A, "b": B}) != tree_checksum({"a": {"b": A}, "c": B})   # nesting


def test_dtype_shape_and_bytes_are_part_of_the_digest():
    zeros = np.zeros((2, 3), np.float32)
    assert tree_checksum({"w": zeros}) != tree_checksum({"w": zeros.view(np.int32)})   # same bytes
    assert tree_checksum({"w": zeros}) != tree_checksum({"w": zeros.reshape(3, 2)})    # same bytes
    flipped = A.copy()
    flipped.reshape(-1).view(np.uint8)[5] ^= 1
    assert tree_checksum({"w": A}) != tree_checksum({"w": flipped})


def test_json_checksum_is_canonical_and_sees_every_value():
    config = {"diffusion": {"beta_end": 0.02, "beta_start": 0.0001}, "model": {"ch_mult": (1, 2)}}
    same = {"model": {"ch_mult": [1, 2]}, "diffusion": {"beta_start": 0.0001, "beta_end": 0.02}}
    assert json_checksum(config) == json_checksum(same)   # key order and tuple-vs-list (a JSON round trip)
    assert json_checksum(config) != json_checksum({**config, "diffusion": {"beta_end": 0.07, "beta_start": 0.0001}})
    assert json_checksum({"step": 30, "data_position": 30}) != json_checksum({"step": 30, "data_position": 10})
    assert json_checksum({"step": 1}) != json_checksum({"step": 1.0})
