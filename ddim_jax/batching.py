"""Running ``sample`` / ``encode`` over any number of images, batch by batch, over this host's devices.

A batch is split over the local devices along a one-axis ``data`` mesh (params replicated); a short
last batch is padded to the batch size and trimmed, so each (batch shape, S) compiles once. All
model calls go through ``ddim_jax.models.eps_fn_for`` with the params as a traced argument.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddim_jax.loading import LoadedModel
from ddim_jax.meshes import DATA_AXIS, local_data_mesh
from ddim_jax.models import eps_fn_for
from ddim_jax.sample_spec import SamplerSpec
from ddim_jax.sampling import encode, sample


class BatchedSampler:
    """Runs ``sample`` / ``encode`` over any number of images in fixed-size batches.

    The batch size is rounded up to a multiple of the number of devices; a short batch is padded
    with zeros and trimmed, so one compilation serves every batch of a given S. ``num_images``
    (the total to process, when known) caps the batch so a few images are not padded to a large
    batch.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int, mesh: Mesh | None = None,
                 num_images: int | None = None):
        self.loaded = loaded
        self.mesh = local_data_mesh() if mesh is None else mesh
        num_devices = self.mesh.devices.size
        if num_images is not None:
            batch_size = max(1, min(batch_size, num_images))
        self.batch_size = -(-batch_size // num_devices) * num_devices
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self._params = jax.device_put(loaded.params, replicated)
        self._alphas_cumprod = jax.device_put(loaded.alphas_cumprod, replicated)
        self._eps_fn = eps_fn_for(loaded.model)

    def _pad(self, x: np.ndarray) -> jax.Array:
        if x.shape[0] > self.batch_size:
            raise ValueError(f"batch of {x.shape[0]} is larger than the batch size {self.batch_size}")
        padding = self.batch_size - x.shape[0]
        if padding:
            x = np.concatenate([x, np.zeros((padding,) + x.shape[1:], x.dtype)])
        return jax.device_put(jnp.asarray(x, jnp.float32), self._batch_sharding)

    def decode_batch(self, x_T: np.ndarray, seq: np.ndarray, spec: SamplerSpec, key: jax.Array) -> np.ndarray:
        """x_T [n <= batch, H, W, C] -> x0 [n, H, W, C] float32 (numpy), Eq. 12 over ``seq``."""
        count = x_T.shape[0]
        x0 = sample(
            self._eps_fn,
            self._pad(np.asarray(x_T)),
            seq,
            self._alphas_cumprod,
            eta=float(spec.eta),
            key=key,
            eps_fn_args=(self._params,),
            clip_x0=bool(spec.clip_x0),
            rederive_eps=self.loaded.rederive_eps,
            prediction_type=self.loaded.prediction_type,
            sigma_hat=bool(spec.sigma_hat),
        )
        return np.asarray(jax.device_get(x0))[:count]

    def encode_batch(self, x0: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """x0 [n <= batch, H, W, C] -> x_T codes [n, H, W, C] (deterministic DDIM inversion)."""
        count = x0.shape[0]
        codes = encode(
            self._eps_fn,
            self._pad(np.asarray(x0)),
            seq,
            self._alphas_cumprod,
            eps_fn_args=(self._params,),
            prediction_type=self.loaded.prediction_type,
        )
        return np.asarray(jax.device_get(codes))[:count]

    def decode(self, x_T: np.ndarray, seq: np.ndarray, spec: SamplerSpec, key: jax.Array,
               progress: Progress | None = None) -> np.ndarray:
        """Any number of codes, batch by batch (batch i uses ``fold_in(key, i)`` for its noise)."""
        outputs = []
        for index, start in enumerate(range(0, x_T.shape[0], self.batch_size)):
            chunk = x_T[start:start + self.batch_size]
            outputs.append(self.decode_batch(chunk, seq, spec, jax.random.fold_in(key, index)))
            if progress is not None:
                progress.update(chunk.shape[0])
        return np.concatenate(outputs)

    def encode(self, x0: np.ndarray, seq: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        outputs = []
        for start in range(0, x0.shape[0], self.batch_size):
            chunk = x0[start:start + self.batch_size]
            outputs.append(self.encode_batch(chunk, seq))
            if progress is not None:
                progress.update(chunk.shape[0])
        return np.concatenate(outputs)


class Progress:
    """A tqdm bar over batches that shows images per second.

    The rate clock starts when the first batch is done, so the compilation it includes does not
    count: the rate is that of the batches after it (none is shown until then).
    """

    def __init__(self, total_batches: int, description: str, enabled: bool, initial: int = 0):
        self._bar = tqdm.tqdm(total=total_batches, initial=initial, desc=description, unit="batch",
                              disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self._start: float | None = None
        self.images = 0

    def update(self, images: int) -> None:
        if self._start is None:   # first batch: includes compilation; start the clock after it
            self._start = time.perf_counter()
        else:
            self.images += images
            elapsed = max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{self.images / elapsed:.1f} img/s", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
