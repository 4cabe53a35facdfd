"""The DDIM authors' checkpoint converter (``convert-ddim-authors``, ermongroup/ddim's ``ckpt.pth``).

The name map is checked against a re-implementation, written for this test, of the structure of
their ``models/diffusion.py`` ``Model`` with their parameter names (random weights, reduced width),
not against itself: the converted directory must load with ``load_diffusers_unet`` and give the same
outputs as this PyTorch model.
"""

import functools

import jax
import numpy as np
import pytest

from benchmarks.adm_reference import randomize
from ddim_jax.models import UNet, abstract_params
from ddim_jax.pretrained import PretrainedError, load_diffusers_schedule, load_diffusers_unet, main
from ddim_jax.pretrained.ddim_authors import CELEBA_CONFIG, diffusers_name, unet2d_config
from ddim_jax.pretrained.unet_mapping import unet_kwargs_from_diffusers_config

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def _norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


class _Res(nn.Module):
    """Their ResnetBlock: norm1, conv1, + temb_proj(silu(temb)), norm2, (dropout), conv2, nin_shortcut."""

    def __init__(self, cin, cout, temb):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj, self.norm2 = nn.Linear(temb, cout), _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x))) + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))  # dropout: eval mode
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _Attn(nn.Module):
    """Their AttnBlock: single-head attention with q, k, v, proj_out 1x1 convs."""

    def __init__(self, channels):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(b, c, height * width) for m in (self.q, self.k, self.v))
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / c ** 0.5, dim=2)
        return x + self.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(b, c, height, width))


def _level(blocks, attns):
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


def _conv_holder(conv):
    holder = nn.Module()
    holder.conv = conv
    return holder


class _AuthorsModel(nn.Module):
    """Their Model: temb.dense, conv_in, down[i].block/attn/downsample, mid, up[i] (prepended), out."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, resolution):
        super().__init__()
        self.ch, temb = ch, 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb), nn.Linear(temb, temb)])
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        widths, res, cin, self.down = [ch], resolution, ch, nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(_Res(cin, ch * mult, temb))
                cin = ch * mult
                attns += [_Attn(cin)] if res in attn_resolutions else []
                widths.append(cin)
            self.down.append(_level(blocks, attns))
            if i != len(ch_mult) - 1:
                self.down[-1].downsample = _conv_holder(nn.Conv2d(cin, cin, 3, stride=2))
                res //= 2
                widths.append(cin)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = _Res(cin, cin, temb), _Attn(cin), _Res(cin, cin, temb)
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(_Res(cin + widths.pop(), ch * ch_mult[i], temb))
                cin = ch * ch_mult[i]
                attns += [_Attn(cin)] if res in attn_resolutions else []
            self.up.insert(0, _level(blocks, attns))
            if i != 0:
                self.up[0].upsample = _conv_holder(nn.Conv2d(cin, cin, 3, padding=1))
                res *= 2
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, x, t):
        half = self.ch // 2  # their get_timestep_embedding: sin first, log(10000) / (half - 1)
        args = t.float()[:, None] * torch.exp(-np.log(10000) / (half - 1) * torch.arange(half, dtype=torch.float32))
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](torch.cat([torch.sin(args), torch.cos(args)], dim=1))))
        hs = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                hs.append(level.attn[j](h) if len(level.attn) else h)
            if hasattr(level, "downsample"):  # pad bottom / right, then a stride-2 conv
                hs.append(level.downsample.conv(F.pad(hs[-1], (0, 1, 0, 1))))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i in reversed(range(len(self.up))):
            for j, block in enumerate(self.up[i].block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                h = self.up[i].attn[j](h) if len(self.up[i].attn) else h
            if i != 0:
                h = self.up[i].upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, x, t):
    return model.apply({"params": params}, x, t)


def _torch_forward(module, x, t):
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).numpy().transpose(0, 2, 3, 1)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def test_key_map_covers_the_paper_celeba_model():
    """At the paper's CelebA size (meta device: shapes only), every name of the authors' Model maps
    onto a distinct parameter of the diffusers-layout UNet with the same number of elements."""
    config = CELEBA_CONFIG
    with torch.device("meta"):
        ref = _AuthorsModel(config["ch"], config["ch_mult"], config["num_res_blocks"], config["attn_resolutions"], 64)
    kwargs = unet_kwargs_from_diffusers_config(unet2d_config(config))
    assert kwargs["ch_mult"] == (1, 2, 2, 2, 4) and kwargs["attn_resolutions"] == (16,) and kwargs["ch"] == 128
    assert kwargs["dropout"] == 0.1 and kwargs["norm_eps"] == 1e-6 and kwargs["downsample_padding"] == 0
    model = UNet(**{k: v for k, v in kwargs.items() if k not in ("sample_size", "in_channels")})
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params(model, (64, 64, 3)))[0]
    ours = {".".join(p.key for p in path): int(np.prod(leaf.shape)) for path, leaf in leaves}
    mapped = {diffusers_name(k, 5): v.numel() for k, v in ref.state_dict().items()}
    assert len(mapped) == len(ref.state_dict()) == len(ours)
    assert sum(mapped.values()) == sum(ours.values()) == sum(p.numel() for p in ref.parameters())
    with pytest.raises(PretrainedError, match="unexpected weight"):
        diffusers_name("down.0.block.0.bogus.weight", 5)


def test_convert_ddim_authors_round_trip(tmp_path, capsys):
    shape = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16)
    raw, ema = (randomize(_AuthorsModel(**shape), seed) for seed in (1, 2))
    # Their ckpt.pth: [model state (DataParallel: "module." names), optimizer, epoch, step, EMA state].
    states = [{"module." + k: v for k, v in raw.state_dict().items()}, {"state": {}, "param_groups": []}, 3, 1000,
              dict(ema.state_dict())]
    torch.save(states, tmp_path / "ckpt.pth")
    args = ["convert-ddim-authors", str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), "--image_size", "16",
            "--ch", "32", "--ch_mult", "1,2,2", "--num_res_blocks", "1", "--attn_resolutions", "8"]
    assert main(args) == 0, capsys.readouterr().err
    model, variables = load_diffusers_unet(tmp_path / "out")
    rng = np.random.default_rng(9)
    x, t = rng.standard_normal((2, 16, 16, 3)).astype(np.float32), np.array([0, 999])
    got = np.asarray(_apply(model, variables["params"], x, t))
    assert _rel(got, _torch_forward(ema, x, t)) < 1e-5
    assert _rel(got, _torch_forward(raw, x, t)) > 1e-2  # the EMA weights were taken
    schedule = load_diffusers_schedule(tmp_path / "out")
    np.testing.assert_allclose(schedule["betas"], np.linspace(1e-4, 0.02, 1000))
    assert schedule["clip_sample"] is False and schedule["prediction_type"] == "eps"
    # A bare state dict with the "module." prefix converts too; a config that does not fit is one line.
    torch.save({"module." + k: v for k, v in ema.state_dict().items()}, tmp_path / "bare.pth")
    assert main(args[:1] + [str(tmp_path / "bare.pth"), str(tmp_path / "bare")] + args[3:]) == 0
    assert main(args[:1] + [str(tmp_path / "bare.pth"), str(tmp_path / "bad")] + args[3:-1] + ["16"]) == 1
    err = capsys.readouterr().err.strip()
    assert "does not match the configured model" in err and "\n" not in err


def test_converting_without_torch_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    """The main install has no PyTorch: the converters say how to get it instead of an ImportError."""
    import sys

    (tmp_path / "ckpt.pth").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)   # import torch -> ImportError
    assert main(["convert-ddim-authors", str(tmp_path / "ckpt.pth"), str(tmp_path / "out")]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and '".[convert]"' in lines[0], lines
