"""Classifier-free guidance on a class-conditional digits run: accuracy and fd_digits per scale.

    python -m benchmarks.guidance_digits --workdir runs/digits_cond --guidance 0,1,2,4 --steps 20 --num 500

For each scale s, ``num`` samples (image i of class i mod 10, the same x_T for every s) are drawn
with DDIM (eta 0, the run's skip and clipping) and scored by ``ddim_jax.metrics.digits_metrics``:
``accuracy`` (the bundled digits classifier agrees with the requested class), ``confidence`` and
``fd_digits`` (Frechet distance of its features to the real digits). A stop-gap until
``evaluate.py`` has its ``--guidance`` axis.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ddim_jax.batching import BatchedSampler
from ddim_jax.guidance import labels_for
from ddim_jax.images import to_uint8
from ddim_jax.loading import load_run
from ddim_jax.metrics import digits_metrics
from ddim_jax.sample_spec import SamplerSpec
from ddim_jax.schedules import timestep_sequence


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/digits_cond")
    parser.add_argument("--guidance", default="0,1,2,4")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    loaded = load_run(args.workdir)
    if loaded.num_classes == 0:
        raise SystemExit(f"{args.workdir} is not class-conditional")
    spec = SamplerSpec(steps=args.steps, eta=0.0, skip=str(loaded.defaults["skip"]),
                       clip_x0=bool(loaded.defaults["clip_x0"]))
    seq = timestep_sequence(args.steps, loaded.num_timesteps, kind=spec.skip)
    code_key, noise_key = jax.random.split(jax.random.key(args.seed))
    x_T = np.asarray(jax.random.normal(code_key, (args.num,) + loaded.image_shape, jnp.float32))
    labels = labels_for(args.num, "all", loaded.num_classes)
    sampler = BatchedSampler(loaded, args.batch_size, num_images=args.num)
    print(f"{loaded.description}: S={args.steps} skip={spec.skip} clip_x0={spec.clip_x0} num={args.num}")
    rows = []
    for scale in (float(s) for s in args.guidance.split(",")):
        start = time.perf_counter()
        images = to_uint8(sampler.decode(x_T, seq, spec, noise_key, labels=labels, guidance=scale))
        metrics = digits_metrics(images, labels)
        rows.append({"guidance": scale, **metrics, "seconds": time.perf_counter() - start})
        print(json.dumps(rows[-1]))
    print("\n| guidance s | accuracy | confidence | fd_digits |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['guidance']:g} | {row['accuracy']:.3f} | {row['confidence']:.3f} | {row['fd_digits']:.2f} |")


if __name__ == "__main__":
    main()
