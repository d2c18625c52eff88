"""Lite multi-scale linear attention (EfficientViT's LiteMLA) on ``kernels.linear_attention``.

The math is EfficientViT's (Cai et al., ICCV 2023) and timm's ``efficientvit_mit.LiteMLA``:
a 1x1 conv makes q, k, v for every head; each aggregation scale adds heads made by a
depthwise ``s x s`` conv and a grouped 1x1 conv of those q, k, v; every head runs non-causal
ReLU linear attention; a 1x1 projection (+ norm) mixes the heads back.

What differs is the memory layout. timm moves every head to (N, D), pads v with a column of
ones, and moves the result back, which copies the multi-scale q, k, v three times. Here the
heads stay channel-major (D, N): q, k and v are strided views of the conv output, the kernel
gets them as transposed views, and the outputs of all scales are gathered by one
``torch.cat``. The attention itself is computed in fp32 for fp16/bf16 inputs (the kernel
accumulates in fp32), so large activations do not overflow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from leanvision.compat.timm import LITE_MLA_PARTS, efficientvit_class
from leanvision.kernels import linear_attention
from leanvision.kernels.dispatch import BACKENDS
from leanvision.kernels.ops.linear_attention.op import MAX_HEAD_DIM, MIN_HEAD_DIM

LayerFactory = type[nn.Module] | None


def _pair(value: object) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def _check_scales(scales: object) -> tuple[int, ...]:
    if not isinstance(scales, (tuple, list)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 and s % 2 == 1 for s in scales
    ):
        raise ValueError(
            f"scales must be a sequence of odd positive ints (kernel sizes, e.g. (5,) or "
            f"(3, 5)); got {scales!r}"
        )
    return tuple(scales)


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention over a (B, C, H, W) feature map.

    ``heads = heads or int(in_channels // head_dim * heads_ratio)``; each of the
    ``1 + len(scales)`` branches contributes ``heads`` heads of size ``head_dim``, so the
    projection sees ``heads * head_dim * (1 + len(scales))`` channels. Parameter names match
    timm's ``LiteMLA`` (``qkv.conv.weight``, ``aggreg.0.0.weight``, ``proj.norm.weight``...),
    so state dicts load either way. ``backend`` is passed to ``kernels.linear_attention``.

    >>> mla = LiteMLA(32, head_dim=8).eval()
    >>> mla(torch.randn(2, 32, 12, 20)).shape
    torch.Size([2, 32, 12, 20])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        head_dim: int = 8,
        heads: int | None = None,
        heads_ratio: float = 1.0,
        scales: Sequence[int] = (5,),
        eps: float = 1e-5,
        use_bias: bool | tuple[bool, bool] = False,
        norm_layer: LayerFactory | tuple[LayerFactory, LayerFactory] = (None, nn.BatchNorm2d),
        act_layer: LayerFactory | tuple[LayerFactory, LayerFactory] = (None, None),
        backend: str = "auto",
    ):
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else out_channels
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("head_dim", head_dim)
        heads = heads or int(in_channels // head_dim * heads_ratio)
        if heads < 1:
            raise ValueError(
                f"in_channels={in_channels}, head_dim={head_dim}, heads_ratio={heads_ratio} give "
                f"{heads} heads; allowed: at least 1 head (in_channels >= head_dim, or pass heads)"
            )
        scales = _check_scales(scales)
        if not eps > 0:
            raise ValueError(f"eps must be > 0; got {eps!r}")
        use_bias, norm_layer, act_layer = _pair(use_bias), _pair(norm_layer), _pair(act_layer)
        total = 3 * heads * head_dim
        conv_norm_act = efficientvit_class("ConvNormAct")
        self.qkv = conv_norm_act(
            in_channels,
            total,
            1,
            bias=use_bias[0],
            norm_layer=norm_layer[0],
            act_layer=act_layer[0],
        )
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(total, total, s, padding=s // 2, groups=total, bias=use_bias[0]),
                nn.Conv2d(total, total, 1, groups=3 * heads, bias=use_bias[0]),
            )
            for s in scales
        )
        self.proj = conv_norm_act(
            heads * head_dim * (1 + len(scales)),
            out_channels,
            1,
            bias=use_bias[1],
            norm_layer=norm_layer[1],
            act_layer=act_layer[1],
        )
        self._setup(in_channels, heads, head_dim, eps, backend)

    def _setup(self, in_channels: int, heads: int, head_dim: int, eps: float, backend: str) -> None:
        if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
            raise ValueError(
                f"head_dim={head_dim} is not allowed; kernels.linear_attention takes head dims "
                f"from {MIN_HEAD_DIM} to {MAX_HEAD_DIM}"
            )
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not allowed; choose one of {list(BACKENDS)}")
        self.in_channels = in_channels
        self.heads = heads
        self.head_dim = head_dim
        self.eps = float(eps)
        self.backend = backend

    @classmethod
    def from_timm(cls, module: nn.Module, *, backend: str = "auto") -> LiteMLA:
        """A LiteMLA that *shares* the submodules (and so the weights) of a timm ``LiteMLA``.

        Nothing is copied: training or moving either module changes both.

        >>> from timm.models.efficientvit_mit import LiteMLA as TimmLiteMLA
        >>> theirs = TimmLiteMLA(16, 16, dim=8)
        >>> ours = LiteMLA.from_timm(theirs)
        >>> ours.qkv is theirs.qkv, ours.heads
        (True, 2)
        """
        kernel_func = getattr(module, "kernel_func", None)
        if not all(hasattr(module, name) for name in LITE_MLA_PARTS):
            raise TypeError(
                f"module of class {type(module).__name__!r} is not a timm efficientvit_mit.LiteMLA "
                f"(needs {', '.join(LITE_MLA_PARTS)})"
            )
        if type(kernel_func) is not nn.ReLU:
            raise ValueError(
                f"timm LiteMLA has kernel_func {type(kernel_func).__name__}; allowed: ReLU "
                f"(the linear attention kernel is ReLU linear attention)"
            )
        head_dim = int(module.dim)
        conv = module.qkv.conv
        heads = conv.out_channels // (3 * head_dim)
        ours = cls.__new__(cls)
        nn.Module.__init__(ours)
        ours.qkv, ours.aggreg, ours.proj = module.qkv, module.aggreg, module.proj
        ours._setup(conv.in_channels, heads, head_dim, module.eps, backend)
        return ours

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(op[0].kernel_size[0] for op in self.aggreg)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, scales={self.scales}, backend={self.backend!r}"

    def _aggregate(self, op: nn.Module, qkv: torch.Tensor) -> torch.Tensor:
        """One multi-scale branch: depthwise s x s conv, then a grouped 1x1 conv.

        The grouped 1x1 conv is a batched (D x D) @ (D x N) matmul over 3 * heads groups;
        run as ``matmul`` it is 1.5-2x faster on CPU than the grouped convolution.
        """
        if not (isinstance(op, nn.Sequential) and len(op) == 2):
            return op(qkv)
        spatial = op[0](qkv)
        mix = op[1]
        if type(mix) is not nn.Conv2d or mix.kernel_size != (1, 1) or mix.stride != (1, 1):
            return mix(spatial)
        batch, channels, height, width = spatial.shape
        groups, width_in = mix.groups, channels // mix.groups
        weight = mix.weight.view(groups, mix.out_channels // groups, width_in)
        out = torch.matmul(weight, spatial.reshape(batch, groups, width_in, height * width))
        if mix.bias is not None:
            out = out + mix.bias.view(groups, -1, 1)
        return out.view(batch, mix.out_channels, height, width)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """ReLU linear attention of the heads of one branch; (B, G*3*D, H, W) -> (B, G, D, N)."""
        batch, _, height, width = qkv.shape
        dim = self.head_dim
        heads = qkv.reshape(batch, -1, 3 * dim, height * width)  # per head: q, k, v channels
        # (B, G, D, N) views, handed over as (B, G, N, D); the kernel applies the ReLU.
        q, k, v = (heads[:, :, i * dim : (i + 1) * dim].transpose(-1, -2) for i in range(3))
        out = linear_attention(q, k, v, eps=self.eps, backend=self.backend)
        return out.transpose(-1, -2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must be a (B, {self.in_channels}, H, W) feature map; got shape {tuple(x.shape)}"
            )
        batch, _, height, width = x.shape
        qkv = self.qkv(x)
        branches = [qkv, *(self._aggregate(op, qkv) for op in self.aggreg)]
        out = torch.cat([self._attend(branch) for branch in branches], dim=1)
        return self.proj(out.reshape(batch, -1, height, width))
