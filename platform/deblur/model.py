"""CNN, STRCNN and STRCNN+DTB (Kim et al., "Online Video Deblurring via Dynamic
Temporal Blending Network", ICCV 2017, Sec. 4 and 5, Fig. 3 and 4).

All three variants share one encoder and one decoder; they differ only in what is
carried from step n-1 to step n:

- ``cnn`` (Fig. 3a): nothing. The encoder's F_{n-1} input is all zeros, so the
  three variants keep the same parameter count (paper Sec. 6.1).
- ``strcnn`` (Fig. 3b): the decoder's feature map F_{n-1} (32 ch, half size).
- ``strcnn_dtb`` (Fig. 3c): F_{n-1} and the blended encoder feature h~_{n-1},
  through the dynamic temporal blending layer (Eq. 2 and 3), the one extra conv.

Layer list (Fig. 4 is not printed in full; this is the public reimplementation the
field compares against): conv5x5(3(2m+1)->64), ReLU, conv3x3(64->32, stride 2), ReLU,
concat F_{n-1}, 4 residual blocks -> h_n; DTB conv5x5(128->64) -> w_n; decoder:
4 residual blocks, F_n = ReLU(conv3x3(64->32)), L_n = conv3x3(ReLU(deconv4x4 s2)) -> 3.

Residual blocks are conv-ReLU-conv plus identity, without batch normalisation (as in
EDSR and most restoration networks): batch statistics of 8 crops are noisy and BN
shifts the colour range, and without BN there is nothing to fold at inference.

The model is stepped one frame at a time with an explicit state, ``step(window, state)
-> (frame, state)``; ``forward(clip)`` only loops ``step`` and is what training uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "DEAD_WEIGHT",
    "VARIANTS",
    "DeblurNet",
    "ModelConfig",
    "RecurrentState",
    "TemporalBlending",
    "build_model",
    "conv_macs",
    "count_macs_per_pixel",
    "has_dead_weights",
    "summarize_model",
    "zero_dead_weights",
]


@dataclass(frozen=True)
class VariantSpec:
    """What a variant carries over time."""

    recurrent: bool  # F_{n-1} fed back into the encoder (Fig. 3b)
    blending: bool  # dynamic temporal blending of h (Fig. 3c)


# Explicit registry: the paper's three networks.
VARIANTS: dict[str, VariantSpec] = {
    "cnn": VariantSpec(recurrent=False, blending=False),
    "strcnn": VariantSpec(recurrent=True, blending=False),
    "strcnn_dtb": VariantSpec(recurrent=True, blending=True),
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; stored as JSON beside every checkpoint."""

    variant: str = "strcnn_dtb"
    m: int = 1  # 2m+1 input frames; the paper's final model uses m=1
    width: int = 64  # channels of the residual trunk
    feature_channels: int = 32  # channels of F_n, handed to the next step
    num_blocks: int = 4  # residual blocks in the encoder and in the decoder
    # Predict L_n as B_n plus a correction. The paper does not say; a global skip is
    # standard in restoration nets and converges much faster on small budgets.
    residual: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {sorted(VARIANTS)}")
        if self.m < 0:
            raise ValueError(f"m must be >= 0, got {self.m}")
        for name in ("width", "feature_channels", "num_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.feature_channels >= self.width:
            raise ValueError("feature_channels must be smaller than width (encoder concat)")

    @property
    def num_frames(self) -> int:
        return 2 * self.m + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict; an unknown key is an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


class RecurrentState(NamedTuple):
    """What step n hands to step n+1. Tensors are at half the (padded) frame size."""

    feature: Tensor | None  # F_{n-1}: (B, feature_channels, H/2, W/2); None for cnn
    blended: Tensor | None  # h~_{n-1}: (B, width, H/2, W/2); None before the first step


class ResidualBlock(nn.Module):
    """x + conv3x3(ReLU(conv3x3(x))), He et al. [12] without batch normalisation."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        # In place on the conv's fresh output (autograd allows it: conv saves its input, not its
        # output): one activation-sized allocation less per block.
        return self.conv2(self.act(self.conv1(x))).add_(x)


class Encoder(nn.Module):
    """Fig. 4a: (2m+1) frames and F_{n-1} -> h_n."""

    def __init__(self, *, in_channels: int, width: int, feature_channels: int, num_blocks: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, width, 5, padding=2)
        self.down = nn.Conv2d(width, width - feature_channels, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.blocks = nn.Sequential(*[ResidualBlock(channels=width) for _ in range(num_blocks)])

    def forward(self, frames: Tensor, feature: Tensor) -> Tensor:
        # frames: (B, 3(2m+1), H, W); feature: (B, Cf, H/2, W/2)
        x = self.act(self.conv_in(frames))  # (B, C, H, W)
        x = self.act(self.down(x))  # (B, C-Cf, H/2, W/2)
        x = torch.cat([x, feature], dim=1)  # (B, C, H/2, W/2)
        return self.blocks(x)  # h_n


class TemporalBlending(nn.Module):
    """Dynamic temporal blending, Eq. 2 and 3.

    w_n = min(1, |tanh(A h~_{n-1} + B h_n)| + beta)      (Eq. 3)
    h~_n = w_n * h_n + (1 - w_n) * h~_{n-1}               (Eq. 2)

    A and B are the two halves of one 5x5 conv over [h~_{n-1}, h_n], without a bias: Eq. 3
    has none, so where h~_{n-1} and h_n are zero the weight is exactly beta. It pads by
    replicating the border, so a border pixel sees feature values like its neighbours'
    rather than zeros, and blends like the interior. beta is stored as a logit and
    read through a sigmoid, so it stays in [0, 1] by construction whatever the
    optimiser does.
    """

    def __init__(self, *, channels: int, beta_init: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < beta_init < 1.0:
            raise ValueError("beta_init must lie strictly inside (0, 1)")
        self.conv = nn.Conv2d(2 * channels, channels, 5, padding=2, padding_mode="replicate", bias=False)
        self.beta_logit = nn.Parameter(torch.logit(torch.tensor(beta_init)))

    @property
    def beta(self) -> Tensor:
        return torch.sigmoid(self.beta_logit)

    def forward(self, h: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor]:
        # h, h_prev: (B, C, H/2, W/2) -> blended (B, C, H/2, W/2), w (B, C, H/2, W/2)
        a = torch.tanh(self.conv(torch.cat([h_prev, h], dim=1)))
        w = torch.clamp(a.abs() + self.beta, max=1.0)
        # Eq. 2 as h~_{n-1} + w (h_n - h~_{n-1}): the same blend in one fused kernel.
        return torch.lerp(h_prev, h, w), w


class Decoder(nn.Module):
    """Fig. 4c: h~_n -> (L_n correction at full size, F_n at half size)."""

    def __init__(self, *, width: int, feature_channels: int, num_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualBlock(channels=width) for _ in range(num_blocks)])
        self.to_feature = nn.Conv2d(width, feature_channels, 3, padding=1)
        self.up = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)
        self.to_image = nn.Conv2d(width, 3, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, h: Tensor, *, want_feature: bool = True) -> tuple[Tensor, Tensor | None]:
        x = self.blocks(h)  # (B, C, H/2, W/2)
        feature = self.act(self.to_feature(x)) if want_feature else None  # F_n: (B, Cf, H/2, W/2)
        image = self.to_image(self.act(self.up(x)))  # (B, 3, H, W)
        return image, feature


class DeblurNet(nn.Module):
    """One of the paper's three networks, stepped one frame at a time.

    Input frames are RGB in [0, 1] (paper Sec. 5.1.1); H and W must be multiples of
    ``stride`` (the online engine pads and crops for any size).
    """

    stride = 2

    def __init__(
        self,
        *,
        variant: str = "strcnn_dtb",
        m: int = 1,
        width: int = 64,
        feature_channels: int = 32,
        num_blocks: int = 4,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.config = ModelConfig(
            variant=variant,
            m=m,
            width=width,
            feature_channels=feature_channels,
            num_blocks=num_blocks,
            residual=residual,
        )
        self.spec = VARIANTS[variant]
        self.encoder = Encoder(
            in_channels=3 * self.config.num_frames,
            width=width,
            feature_channels=feature_channels,
            num_blocks=num_blocks,
        )
        self.blending = TemporalBlending(channels=width) if self.spec.blending else None
        self.decoder = Decoder(width=width, feature_channels=feature_channels, num_blocks=num_blocks)

    @property
    def m(self) -> int:
        return self.config.m

    def init_state(
        self,
        batch: int,
        height: int,
        width: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RecurrentState:
        """State before the first frame: F_{-1} = 0 (also the cnn's permanent input).

        There is no h~_{-1}: the first step blends h_0 with itself, so h~_0 = h_0.
        """
        if height % self.stride or width % self.stride:
            raise ValueError(f"frame size {width}x{height} is not a multiple of {self.stride}")
        dtype = dtype or next(self.parameters()).dtype
        feature = torch.zeros(batch, self.config.feature_channels, height // 2, width // 2, device=device, dtype=dtype)
        return RecurrentState(feature=feature, blended=None)

    def step(self, window: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """Deblur the middle frame of ``window``: <B_n>_m -> L_n.

        window: (B, 2m+1, 3, H, W), frames n-m..n+m in [0, 1].
        Returns L_n: (B, 3, H, W) and the state for step n+1.
        """
        _, t, c, _, _ = window.shape
        if t != self.config.num_frames or c != 3:
            raise ValueError(
                f"window must be (B, {self.config.num_frames}, 3, H, W) for m={self.m}, got {tuple(window.shape)}"
            )
        assert state.feature is not None  # init_state always provides F_{-1}
        frames = window.flatten(1, 2)  # (B, 3(2m+1), H, W)
        h_n = self.encoder(frames, state.feature)  # (B, C, H/2, W/2)

        blended = None
        if self.blending is not None:
            h_prev = h_n if state.blended is None else state.blended
            h_n, _ = self.blending(h_n, h_prev)
            blended = h_n

        image, feature = self.decoder(h_n, want_feature=self.spec.recurrent)
        if self.config.residual:
            image = image + window[:, self.m]  # B_n + correction
        if not self.spec.recurrent:
            feature = state.feature  # cnn: F stays zero
        return image, RecurrentState(feature=feature, blended=blended)

    def forward(self, clip: Tensor) -> Tensor:
        """Deblur every frame of ``clip`` whose whole window lies inside it.

        clip: (B, T, 3, H, W) -> (B, T - 2m, 3, H, W), the outputs for n = m..T-1-m,
        the state starting from ``init_state`` (zero) as in training (Sec. 5.3).
        """
        b, t, _, h, w = clip.shape
        if t < self.config.num_frames:
            raise ValueError(f"clip has {t} frames; m={self.m} needs at least {self.config.num_frames}")
        state = self.init_state(b, h, w, device=clip.device, dtype=clip.dtype)
        outputs = []
        for n in range(self.m, t - self.m):
            frame, state = self.step(clip[:, n - self.m : n + self.m + 1], state)
            outputs.append(frame)
        return torch.stack(outputs, dim=1)


def build_model(config: ModelConfig) -> DeblurNet:
    return DeblurNet(**config.to_dict())


# Adam with the L2 term of Eq. 4 shrinks a weight that the data no longer moves (e.g. into a
# channel ReLU keeps at zero) geometrically towards zero: a 2400-step model had 10% of its
# weights below 1e-35. Such a weight changes no output (times any activation here it is far
# below fp32's resolution of [0, 1]), but its products fall into the subnormal range, where
# x86 CPUs take a microcode assist per operation: fp32 inference of the same run's step-1800
# checkpoint ran 16x slower (7.9 s against 0.48 s for 3 frames of 480x270, 2 threads) than
# with them zeroed, which gave a bit-identical output. Training zeroes them after every step,
# the engine and the int8 path before they run a model.
DEAD_WEIGHT = 1e-30


def zero_dead_weights(model: DeblurNet) -> DeblurNet:
    """Set every parameter smaller in magnitude than ``DEAD_WEIGHT`` (but not zero) to zero, in place."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.masked_fill_(parameter.abs() < DEAD_WEIGHT, 0.0)
    return model


def has_dead_weights(model: DeblurNet) -> bool:
    """Whether any parameter is non-zero but smaller in magnitude than ``DEAD_WEIGHT``."""
    return any(
        bool(((p != 0) & (p.abs() < DEAD_WEIGHT)).any())
        for p in model.parameters()
        if p.is_floating_point() and p.device.type != "meta"  # meta tensors hold no values
    )


@dataclass(frozen=True)
class ModelSummary:
    variant: str
    m: int
    parameters: int
    macs_per_pixel: float  # multiply-adds of the conv layers per output pixel

    def format(self) -> str:
        return (
            f"variant          {self.variant}\n"
            f"m                {self.m} ({2 * self.m + 1} input frames)\n"
            f"parameters       {self.parameters:,} ({self.parameters / 1e6:.2f} M)\n"
            f"MACs per pixel   {self.macs_per_pixel:,.0f} ({self.macs_per_pixel / 1e3:.0f} K)"
        )


def conv_macs(module: nn.Conv2d | nn.ConvTranspose2d, x: Tensor, output: Tensor) -> int:
    """Multiply-adds of one call of ``module`` on input ``x`` giving ``output``."""
    kernel = module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.ConvTranspose2d):
        # each input element scatters into out_channels * k*k outputs
        return x.numel() * module.out_channels * kernel // module.groups
    return output.numel() * (module.in_channels // module.groups) * kernel


def count_macs_per_pixel(model: DeblurNet, *, height: int = 64, width: int = 64) -> float:
    """Multiply-adds of every conv and transposed conv for one step, per output pixel.

    Counted by running one step on a dummy frame with hooks, so the figure follows
    the modules actually called (not a hand-kept table). Element-wise work (ReLU,
    tanh, blending, additions) is a few per pixel and not counted.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        assert isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
        total += conv_macs(module, inputs[0], output)

    handles = [
        mod.register_forward_hook(hook) for mod in model.modules() if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        with torch.inference_mode():
            device = next(model.parameters()).device
            window = torch.zeros(1, model.config.num_frames, 3, height, width, device=device)
            state = model.init_state(1, height, width, device=device)
            # Count a steady-state step (n > 0), the one every later frame costs.
            _, state = model.step(window, state)
            total = 0
            model.step(window, state)
    finally:
        for handle in handles:
            handle.remove()
    return total / (height * width)


def summarize_model(model: DeblurNet) -> ModelSummary:
    return ModelSummary(
        variant=model.config.variant,
        m=model.m,
        parameters=sum(p.numel() for p in model.parameters()),
        macs_per_pixel=count_macs_per_pixel(model),
    )
