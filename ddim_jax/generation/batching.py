"""Running ``sample`` / ``encode`` over any number of images, batch by batch, over this host's devices.

A batch is split over the local devices along a one-axis ``data`` mesh (params replicated); a short
last batch is padded to the batch size and trimmed, so each (batch shape, S) compiles once. All
model calls go through the model's ``LoadedModel.eps_fn()`` with the params as a traced argument.
Class-conditional models take ``labels`` (int [n], padded with the null class) and a ``guidance``
scale (``ddim_jax.guidance``; 1 = plain conditional, one network call per step; otherwise the
conditional and null halves in one call on a doubled batch).
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddim_jax.generation.loading import LoadedModel
from ddim_jax.generation.sampler_spec import SamplerSpec
from ddim_jax.guidance import guided_eps_fn
from ddim_jax.parallel.meshes import DATA_AXIS, ceil_div, local_data_mesh
from ddim_jax.sampling import encode, sample
from ddim_jax.validation import check_guidance_args


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
        self.batch_size = ceil_div(batch_size, num_devices) * num_devices
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self._params = jax.device_put(loaded.params, replicated)
        self._alphas_cumprod = jax.device_put(loaded.alphas_cumprod, replicated)
        self._eps_fn = loaded.eps_fn()
        self._classifier_params = (None if loaded.classifier is None
                                   else jax.device_put(loaded.classifier.params, replicated))

    def _pad(self, x: np.ndarray) -> jax.Array:
        if x.shape[0] > self.batch_size:
            raise ValueError(f"batch of {x.shape[0]} is larger than the batch size {self.batch_size}")
        padding = self.batch_size - x.shape[0]
        if padding:
            x = np.concatenate([x, np.zeros((padding,) + x.shape[1:], x.dtype)])
        return jax.device_put(jnp.asarray(x, jnp.float32), self._batch_sharding)

    def _padded_labels(self, labels: np.ndarray, fill: int) -> jax.Array:
        padded = np.full((self.batch_size,), fill, np.int32)
        padded[:labels.shape[0]] = labels
        return jax.device_put(padded, self._batch_sharding)

    def _model(self, labels: np.ndarray | None, guidance: float, count: int) -> tuple:
        """``(eps_fn, eps_fn_args)``: unconditional (no labels, or labels only for a classifier),
        conditional (guidance 1), null labels (guidance 0) or classifier-free guided (labels and
        scale traced). The labels of the ``count`` images and the scale are checked here, where
        their values are known: inside ``sample`` an out-of-range label would silently pick another
        class (or NaN)."""
        if labels is None or not self.loaded.model_takes_labels:
            return self._eps_fn, (self._params,)
        num_classes = int(self.loaded.model.num_classes)
        # A model without a null class (ADM) has only the classes 0 .. K - 1.
        null = num_classes if self.loaded.null_class else num_classes - 1
        check_guidance_args(labels, guidance, count, null, "BatchedSampler")
        labels = np.asarray(labels, np.int32)
        if not self.loaded.null_class:  # padding rows take class 0, then are trimmed
            return self._eps_fn, (self._params, self._padded_labels(labels, 0))
        if guidance == 0:
            labels = np.full_like(labels, null)
        labels = self._padded_labels(labels, null)
        if guidance in (0, 1):
            return self._eps_fn, (self._params, labels)
        return guided_eps_fn(self._eps_fn, null), (self._params, labels, jnp.float32(guidance))

    def _classifier(self, labels: np.ndarray | None) -> dict:
        """``sample``'s ``cond_fn`` / ``cond_fn_args`` for classifier guidance ({} without one)."""
        classifier = self.loaded.classifier
        if classifier is None:
            return {}
        if labels is None:
            raise ValueError("classifier guidance needs labels (int [n]): the class each image is guided to")
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (
                labels.size and (labels.min() < 0 or labels.max() >= classifier.num_classes)):
            raise ValueError(f"classifier guidance: labels must be integers [n] in 0..{classifier.num_classes - 1}, "
                             f"got {labels.dtype} {labels.shape}")
        labels = self._padded_labels(labels.astype(np.int32), 0)
        return dict(cond_fn=classifier.cond_fn,
                    cond_fn_args=(self._classifier_params, labels, jnp.float32(classifier.scale)))

    def _pad_keys(self, keys: jax.Array) -> jax.Array:
        """Per-image keys [n] -> raw uint32 [batch, 2] (padding rows reuse key 0), split like x_T."""
        raw = np.asarray(jax.random.key_data(keys) if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
                         else keys)
        padding = self.batch_size - raw.shape[0]
        if padding:
            raw = np.concatenate([raw, np.repeat(raw[:1], padding, axis=0)])
        return jax.device_put(raw, self._batch_sharding)

    def decode_batch(self, x_T: np.ndarray, seq: np.ndarray, spec: SamplerSpec, key: jax.Array,
                     labels: np.ndarray | None = None, guidance: float = 1.0) -> np.ndarray:
        """x_T [n <= batch, H, W, C] -> x0 [n, H, W, C] float32 (numpy) with ``spec``'s solver over ``seq``.

        ``key`` is one key for the batch, or one key per image (``[n]``): then image i's noise
        comes from ``key[i]`` alone, whatever batch it is sampled in. ``labels`` (int [n]) and
        ``guidance`` steer a class-conditional model (see ``_model``).
        """
        count = x_T.shape[0]
        per_image = (key.ndim == 1) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else (key.ndim == 2)
        eps_fn, eps_fn_args = self._model(labels, guidance, count)
        x0 = sample(
            eps_fn,
            self._pad(np.asarray(x_T)),
            seq,
            self._alphas_cumprod,
            eta=float(spec.eta),
            key=self._pad_keys(key) if per_image else key,
            eps_fn_args=eps_fn_args,
            clip_x0=bool(spec.clip_x0),
            rederive_eps=self.loaded.rederive_eps,
            prediction_type=self.loaded.prediction_type,
            sigma_hat=bool(spec.sigma_hat),
            solver=spec.solver,
            output_type=self.loaded.output_type,
            **self._classifier(labels),
        )
        return np.asarray(jax.device_get(x0))[:count]

    def encode_batch(self, x0: np.ndarray, seq: np.ndarray, labels: np.ndarray | None = None,
                     guidance: float = 1.0) -> np.ndarray:
        """x0 [n <= batch, H, W, C] -> x_T codes [n, H, W, C] (deterministic DDIM inversion)."""
        count = x0.shape[0]
        eps_fn, eps_fn_args = self._model(labels, guidance, count)
        codes = encode(
            eps_fn,
            self._pad(np.asarray(x0)),
            seq,
            self._alphas_cumprod,
            eps_fn_args=eps_fn_args,
            prediction_type=self.loaded.prediction_type,
            output_type=self.loaded.output_type,
        )
        return np.asarray(jax.device_get(codes))[:count]

    def decode(self, x_T: np.ndarray, seq: np.ndarray, spec: SamplerSpec, key: jax.Array,
               progress: Progress | None = None, labels: np.ndarray | None = None,
               guidance: float = 1.0) -> np.ndarray:
        """Any number of codes, batch by batch (batch i uses ``fold_in(key, i)`` for its noise)."""
        outputs = []
        for index, start in enumerate(range(0, x_T.shape[0], self.batch_size)):
            chunk = x_T[start:start + self.batch_size]
            chunk_labels = None if labels is None else labels[start:start + self.batch_size]
            outputs.append(self.decode_batch(chunk, seq, spec, jax.random.fold_in(key, index), chunk_labels, guidance))
            if progress is not None:
                progress.update(chunk.shape[0])
        return np.concatenate(outputs)

    def encode(self, x0: np.ndarray, seq: np.ndarray, progress: Progress | None = None,
               labels: np.ndarray | None = None, guidance: float = 1.0) -> np.ndarray:
        outputs = []
        for start in range(0, x0.shape[0], self.batch_size):
            chunk = x0[start:start + self.batch_size]
            chunk_labels = None if labels is None else labels[start:start + self.batch_size]
            outputs.append(self.encode_batch(chunk, seq, chunk_labels, guidance))
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
