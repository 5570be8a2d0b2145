"""Building blocks of ParagonSR2 (not registered; no ``_arch`` suffix).

The frozen "Magic Kernel Sharp" base upsampler, the InceptionDW token mixer, LayerScale,
channel RMSNorm, squeeze-excitation channel modulation, the block FFN, the block itself, a
residual group of blocks and ICNR initialisation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Published Magic Kernel Sharp taps: a 7-tap sharpener and the 5-tap cubic B-spline blur.
SHARPEN_TAPS = (-1.0, 0.0, 9.0, 16.0, 9.0, 0.0, -1.0)
SHARPEN_DIV = 32.0
BLUR_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)
BLUR_DIV = 16.0


def separable_filter(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Filter every channel of ``x`` (NCHW) with the 1-D ``taps`` along W, then along H.

    Borders use replicate padding (edge pixels repeated), so a constant image stays constant
    and images of any size, even 1x1, are accepted.
    """
    c = x.shape[1]
    k = taps.numel()
    r = k // 2
    taps = taps.to(dtype=x.dtype)
    x = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def base_channel_map(num_in_ch: int, num_out_ch: int) -> torch.Tensor | None:
    """Fixed out x in matrix that maps input bands onto output bands for the base path.

    ``None`` when the counts match (identity). One input band is copied to every output band
    (grey → colour); one output band is the mean of all input bands; otherwise the first
    ``min(in, out)`` bands pass through, extra output bands get the mean of all input bands
    and extra input bands are left to the learned detail path.
    """
    if num_in_ch == num_out_ch:
        return None
    m = torch.zeros(num_out_ch, num_in_ch)
    if num_in_ch == 1:
        m[:, 0] = 1.0
    elif num_out_ch == 1:
        m[0, :] = 1.0 / num_in_ch
    else:
        n = min(num_in_ch, num_out_ch)
        m[:n, :n] = torch.eye(n)
        m[n:, :] = 1.0 / num_in_ch
    return m


class MagicKernelSharpUpsampler(nn.Module):
    """Fixed upsampler: pre-sharpen (7 taps), nearest upsample, B-spline blur (5 taps).

    ``x ← x + alpha·(S(x) − x)``, then nearest ×scale, then the blur, each filter separable and
    depthwise. The taps are non-persistent buffers: no gradient, nothing in the state dict.
    """

    def __init__(self, scale: int, alpha: float, num_in_ch: int = 3, num_out_ch: int = 3) -> None:
        super().__init__()
        self.scale = scale
        self.alpha = float(min(max(alpha, 0.0), 1.0))
        self.register_buffer("sharpen", torch.tensor(SHARPEN_TAPS) / SHARPEN_DIV, persistent=False)
        self.register_buffer("blur", torch.tensor(BLUR_TAPS) / BLUR_DIV, persistent=False)
        cmap = base_channel_map(num_in_ch, num_out_ch)
        self.register_buffer("channel_map", cmap, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        # The base carries most of the output: keep it in float32 even under autocast, where
        # bf16 would round every output pixel to 8 significant bits.
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.channel_map is not None:
                # The filters act per channel with identical taps, so mapping bands first is
                # exact and filters only the bands that are kept.
                x = torch.einsum("oi,nihw->nohw", self.channel_map.float(), x)
            if self.alpha > 0:
                x = x + self.alpha * (separable_filter(x, self.sharpen) - x)
            x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
            x = separable_filter(x, self.blur)
        return x.to(dtype)


class InceptionDWConv(nn.Module):
    """Token mixer: channels split [C−3g, g, g, g] → identity, 3x3, 1xk and kx1 depthwise."""

    def __init__(self, channels: int, band_kernel_size: int = 11, branch_ratio: float = 0.125) -> None:
        super().__init__()
        g = max(1, int(channels * branch_ratio))
        if channels < 3 * g:
            raise ValueError(f"InceptionDWConv: {channels} channels are too few for 3 branches of {g}")
        k = band_kernel_size
        self.dwconv_hw = nn.Conv2d(g, g, 3, padding=1, groups=g)
        self.dwconv_w = nn.Conv2d(g, g, (1, k), padding=(0, k // 2), groups=g)
        self.dwconv_h = nn.Conv2d(g, g, (k, 1), padding=(k // 2, 0), groups=g)
        self.split_sizes = (channels - 3 * g, g, g, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_sizes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)


class LayerScale(nn.Module):
    """Per-channel learnable scale ``gamma`` (initialised small so a block starts near identity)."""

    def __init__(self, channels: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class ChannelRMSNorm(nn.Module):
    """RMS normalisation over the channel axis of NCHW features, with a per-channel weight."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32: squaring bf16/fp16 activations loses too much precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return (xf * self.weight.float().view(1, -1, 1, 1)).to(x.dtype)


class ChannelModulation(nn.Module):
    """Squeeze-excitation: global average → 1x1 (C→C/r) → ReLU → 1x1 (C/r→C) → sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class ParagonFFN(nn.Module):
    """1x1 C→H → 3x3 depthwise → LeakyReLU(0.1) → 1x1 H→H → [SE] → 1x1 H→C."""

    def __init__(self, channels: int, expansion: float, use_channel_mod: bool) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        if hidden < 1:
            raise ValueError(f"ffn_expansion {expansion} gives an empty FFN for {channels} channels")
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.fc2 = nn.Conv2d(hidden, hidden, 1)
        self.channel_mod = ChannelModulation(hidden) if use_channel_mod else nn.Identity()
        self.fc3 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.dwconv(self.fc1(x)))
        return self.fc3(self.channel_mod(self.fc2(x)))


class ParagonBlock(nn.Module):
    """``x + LS1(mixer(x))``, then ``x + LS2(FFN(x))``, then optional channel RMSNorm."""

    def __init__(
        self,
        channels: int,
        ffn_expansion: float,
        band_kernel_size: int,
        use_norm: bool,
        use_channel_mod: bool,
        layer_scale_init: float = 1e-5,
    ) -> None:
        super().__init__()
        self.token_mixer = InceptionDWConv(channels, band_kernel_size)
        self.ls1 = LayerScale(channels, layer_scale_init)
        self.ffn = ParagonFFN(channels, ffn_expansion, use_channel_mod)
        self.ls2 = LayerScale(channels, layer_scale_init)
        self.norm = ChannelRMSNorm(channels) if use_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.token_mixer(x))
        x = x + self.ls2(self.ffn(x))
        return self.norm(x)


class ResidualGroup(nn.Module):
    """A chain of blocks with a skip around it: ``blocks(x) + x``."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) + x


@torch.no_grad()
def icnr_(weight: torch.Tensor, scale: int) -> torch.Tensor:
    """ICNR: Kaiming-initialise one kernel per output feature and repeat it ``scale²`` times.

    PixelShuffle takes the ``scale²`` consecutive channels ``c·s² … c·s²+s²−1`` to the sub-pixel
    positions of output channel ``c``; giving them the same kernel makes the shuffled output
    start out as a nearest-neighbour upsample of one convolution (no checkerboard).
    """
    out_ch, in_ch, kh, kw = weight.shape
    s2 = scale * scale
    if out_ch % s2:
        raise ValueError(f"icnr_: {out_ch} output channels do not divide by scale² = {s2}")
    sub = torch.empty(out_ch // s2, in_ch, kh, kw, dtype=weight.dtype, device=weight.device)
    nn.init.kaiming_normal_(sub)
    weight.copy_(sub.repeat_interleave(s2, dim=0))
    return weight
