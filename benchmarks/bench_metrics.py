"""FID feature extraction speed: ddim_jax.metrics (Flax, jitted) vs pytorch-fid, same random weights.

Run:  python -m benchmarks.bench_metrics [--num 32] [--size 32] [--repeats 3] [--batch 32]

Both networks get the same random FID-Inception state dict (nothing is downloaded) and the same
uint8 [N, size, size, 3] images, resized to 299 x 299 inside the network as pytorch-fid does. Runs
alternate (ours, theirs, ours, ...) after one warm-up call each (ours includes the XLA compile,
reported separately); the table gives the median and best images/s over the repeats and the
largest relative difference of the 2048-d features. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
from safetensors.numpy import save_file

from benchmarks.machine import LoadWatch
from benchmarks.torch_reference import random_fid_inception_state
from ddim_jax.metrics import inception_features, load_inception


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    watch = LoadWatch()
    state = random_fid_inception_state()
    import pytorch_fid.inception as inception_module  # torchvision is importable now (torch_reference)

    original_loader = inception_module.load_state_dict_from_url
    inception_module.load_state_dict_from_url = lambda *a, **k: state
    try:
        theirs = inception_module.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    finally:
        inception_module.load_state_dict_from_url = original_loader
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inception.safetensors")
        save_file({k: v.numpy() for k, v in state.items()}, path)
        ours = load_inception(path)

    images = np.random.default_rng(0).integers(0, 256, (args.num, args.size, args.size, 3), dtype=np.uint8)

    def run_ours():
        return inception_features(images, ours, batch_size=args.batch, progress=False)

    def run_theirs():
        out = []
        with torch.no_grad():
            for start in range(0, args.num, args.batch):
                batch = torch.from_numpy(images[start:start + args.batch]).permute(0, 3, 1, 2).float() / 255.0
                out.append(theirs(batch)[0][:, :, 0, 0].numpy())
        return np.concatenate(out)

    start = time.perf_counter()
    ours_feats = run_ours()
    first_call = time.perf_counter() - start
    theirs_feats = run_theirs()
    rel_err = float(np.abs(ours_feats - theirs_feats).max() / np.abs(theirs_feats).max())
    times: dict[str, list[float]] = {"ddim_jax.metrics (Flax, jit)": [], "pytorch-fid 0.3.0 (torch CPU)": []}
    for _ in range(args.repeats):
        for name, fn in zip(times, (run_ours, run_theirs), strict=True):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    device = jax.devices()[0]
    print(f"Inception feature extraction, {args.num} uint8 {args.size}x{args.size} images -> 299x299, batch "
          f"{args.batch}, {args.repeats} interleaved repeats; JAX {jax.__version__} on {device.platform} "
          f"({len(jax.local_devices())} device(s), {os.cpu_count()} CPUs), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)\n")
    print("| implementation | median images/s | best images/s | median s / run | speed vs pytorch-fid |")
    print("|---|---:|---:|---:|---:|")
    theirs_median = statistics.median(times["pytorch-fid 0.3.0 (torch CPU)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {args.num / median:.1f} | {args.num / min(values):.1f} | {median:.2f} "
              f"| {watch.ratio(theirs_median / median)} |")
    print(f"\nFirst call of ours (XLA compile + run): {first_call:.1f} s. "
          f"Max relative feature difference: {rel_err:.1e}.")
    watch.close()


if __name__ == "__main__":
    main()
