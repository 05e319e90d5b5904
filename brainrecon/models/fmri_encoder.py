"""NeuroPictor stage i: the fMRI *calibrated encoder* (a guide-token masked auto-encoder).

A ViT encodes a ``1×H×W`` cortical flatmap into ``S^r`` (NeuroPictor Eq. 1): one learnable
**guide token** followed by one token per patch. During calibrated-encoding pre-training the
decoder sees *only* the guide token: every patch position is a mask token, so the whole map must
be rebuilt from the guide token alone (NeuroPictor §3.1; the official code's fMRI-PTE
autoencoder keeps only its cls token in the same way, reference/peers.md §1.3). After stage i
the decoder is dropped (:meth:`CalibratedEncoder.drop_decoder`) and :meth:`encode` returns all
``1 + L`` tokens, like the official ``forward_encoder_wo_pred``.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import InvalidInputError

__all__ = ["CalibratedEncoder", "Block", "sincos_pos_embed_1d", "sincos_pos_embed_2d"]


def _sincos(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """``[sin(pos·ω), cos(pos·ω)]`` with ``ω_k = 10000^(-k / (dim/2))``: ``(len(pos), dim)``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    out = pos.reshape(-1, 1).double() * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_1d(dim: int, length: int) -> torch.Tensor:
    """Fixed 1-D sine-cosine position embeddings (MAE style), ``(length, dim)``."""
    if dim % 2:
        raise InvalidInputError(f"sin-cos position embeddings need an even width; got {dim}.")
    return _sincos(torch.arange(length), dim).float()


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (MAE style), ``(grid_h * grid_w, dim)``.

    Half of the channels encode the row, half the column; each half is the usual 1-D
    ``[sin(pos·ω), cos(pos·ω)]`` with ``ω_k = 10000^(-k / (dim/4))``.
    """
    if dim % 4:
        raise InvalidInputError(f"sin-cos position embeddings need a width divisible by 4; got {dim}.")
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    return torch.cat([_sincos(rows, dim // 2), _sincos(cols, dim // 2)], dim=1).float()


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention (SDPA) and a GELU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise InvalidInputError(f"width {dim} is not divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class CalibratedEncoder(ModelMixin, ConfigMixin):
    r"""
    Guide-token masked auto-encoder over cortical flatmaps (NeuroPictor §3.1, Eq. 1).

    Parameters:
        image_size (`int` or `tuple[int, int]`, defaults to `256`):
            Flatmap side(s) ``H, W``; both must be multiples of `patch_size`.
        patch_size (`int`, defaults to `16`):
            Square patch side; ``L = (H/p)·(W/p)`` patch tokens.
        in_channels (`int`, defaults to `1`):
            Flatmap channels.
        embed_dim (`int`, defaults to `1024`):
            Encoder width ``d_r``.
        depth (`int`, defaults to `24`):
            Encoder blocks.
        num_heads (`int`, defaults to `16`):
            Encoder attention heads.
        decoder_embed_dim (`int`, defaults to `512`):
            Decoder width.
        decoder_depth (`int`, defaults to `8`):
            Decoder blocks.
        decoder_num_heads (`int`, defaults to `16`):
            Decoder attention heads.
        mlp_ratio (`float`, defaults to `4.0`):
            MLP hidden width / block width.
        mask_ratio (`float`, defaults to `0.0`):
            Fraction of *input* patches hidden from the encoder in training mode (MAE-style
            augmentation). The latent is always fully masked for the decoder, whatever this is.
        has_decoder (`bool`, defaults to `True`):
            `False` after :meth:`drop_decoder` (stage ii and later keep only the encoder).
    """

    @register_to_config
    def __init__(self, image_size=256, patch_size: int = 16, in_channels: int = 1,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 mlp_ratio: float = 4.0, mask_ratio: float = 0.0, has_decoder: bool = True):
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if h % patch_size or w % patch_size:
            raise InvalidInputError(f"image_size {(h, w)} is not a multiple of patch_size={patch_size}.")
        if not 0.0 <= mask_ratio < 1.0:
            raise InvalidInputError(f"mask_ratio must be in [0, 1); got {mask_ratio}.")
        self.image_hw = (h, w)
        self.grid = (h // patch_size, w // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]

        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.guide_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, *self.grid)[None],
                             persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        if has_decoder:
            self._build_decoder()
        self._init_weights()

    # ------------------------------------------------------------------ construction
    def _build_decoder(self):
        c = self.config
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_pos_embed_2d(c.decoder_embed_dim, *self.grid)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio)
                                            for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size ** 2 * c.in_channels)

    def _init_weights(self):
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.guide_token, std=0.02)
        if self.config.has_decoder:
            nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def drop_decoder(self) -> "CalibratedEncoder":
        """Delete the MAE decoder (after stage i); ``save_pretrained`` then stores the encoder only."""
        for name in ("decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks",
                     "decoder_norm", "decoder_pred"):
            if hasattr(self, name):
                delattr(self, name)
        self.register_to_config(has_decoder=False)
        return self

    # ------------------------------------------------------------------ shapes
    @property
    def num_tokens(self) -> int:
        """``L_r = 1 + L``: tokens of ``S^r`` (guide token first)."""
        return 1 + self.num_patches

    def _check_maps(self, maps: torch.Tensor) -> None:
        want = (self.config.in_channels, *self.image_hw)
        if maps.ndim != 4 or tuple(maps.shape[1:]) != want:
            shape = ", ".join(map(str, want))
            raise InvalidInputError(f"CalibratedEncoder expects flatmaps of shape (B, {shape}); "
                                    f"got {tuple(maps.shape)}. Project with FlatmapProjector"
                                    f"({self.image_hw[0]}) or build the encoder for your map size.")

    def patchify(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, L, p²·C)`` in row-major patch order."""
        p, (gh, gw), c = self.config.patch_size, self.grid, self.config.in_channels
        x = maps.reshape(maps.shape[0], c, gh, p, gw, p)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(maps.shape[0], gh * gw, p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`."""
        p, (gh, gw), c = self.config.patch_size, self.grid, self.config.in_channels
        x = patches.reshape(patches.shape[0], gh, gw, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(patches.shape[0], c, gh * p, gw * p)

    # ------------------------------------------------------------------ encoder
    def encode(self, maps: torch.Tensor, mask_ratio: float = 0.0, generator=None) -> torch.Tensor:
        """``S^r = E(S)`` (NeuroPictor Eq. 1): all tokens, ``(B, 1 + L, embed_dim)``.

        Parameters
        ----------
        maps : Tensor ``(B, in_channels, H, W)``
        mask_ratio : float
            Drop this fraction of patch tokens (random per sample) before the blocks; the
            output then has ``1 + round(L·(1 - mask_ratio))`` tokens. Keep ``0`` outside stage i.
        generator : torch.Generator, optional
            For the random choice of kept patches.
        """
        self._check_maps(maps)
        x = self.patch_embed(maps).flatten(2).transpose(1, 2) + self.pos_embed.to(maps.dtype)
        if mask_ratio > 0:
            b, n, d = x.shape
            keep = max(1, int(round(n * (1.0 - mask_ratio))))
            dev = generator.device if generator is not None else x.device
            noise = torch.rand(b, n, generator=generator, device=dev).to(x.device)
            idx = noise.argsort(dim=1)[:, :keep]
            x = torch.gather(x, 1, idx[..., None].expand(-1, -1, d))
        x = torch.cat([self.guide_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    # ------------------------------------------------------------------ decoder
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Rebuild the whole map from the guide token only, ``(B, in_channels, H, W)``.

        ``latent`` is the encoder output ``(B, 1 + n, embed_dim)`` (or just the guide token,
        ``(B, embed_dim)``). Every other token is replaced by the mask token: the decoder input is
        ``[guide, mask_1 + pos_1, …, mask_L + pos_L]`` (NeuroPictor §3.1).
        """
        if not self.config.has_decoder:
            raise InvalidInputError("This CalibratedEncoder's decoder was dropped (drop_decoder); "
                                    "it can only encode. Load the stage-i checkpoint to reconstruct maps.")
        guide = latent[:, 0] if latent.ndim == 3 else latent
        g = self.decoder_embed(guide)[:, None]
        masks = self.mask_token.to(g.dtype) + self.decoder_pos_embed.to(g.dtype)
        x = torch.cat([g, masks.expand(g.shape[0], -1, -1)], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.unpatchify(self.decoder_pred(self.decoder_norm(x))[:, 1:])

    @staticmethod
    def reconstruction_loss(reconstruction: torch.Tensor, maps: torch.Tensor,
                            pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel MSE, averaged over the pixels where ``pixel_mask`` is true (all if None).

        ``pixel_mask`` broadcasts against ``(B, C, H, W)``: e.g. the flatmap's ``(H, W)``
        ``FlatmapProjector.pixel_mask`` (cortex pixels only) or per-sample ``(B, 1, H, W)``.
        """
        err = (reconstruction - maps) ** 2
        if pixel_mask is None:
            return err.mean()
        m = torch.as_tensor(pixel_mask, device=err.device).to(err.dtype).expand_as(err)
        total = m.sum()
        if total <= 0:
            raise InvalidInputError("pixel_mask selects no pixel; pass None to use the whole map.")
        return (err * m).sum() / total

    def forward(self, maps: torch.Tensor, pixel_mask: torch.Tensor | None = None,
                mask_ratio: float | None = None, generator=None):
        """Stage-i objective: ``(loss, reconstruction)``.

        Parameters
        ----------
        maps : Tensor ``(B, in_channels, H, W)``
        pixel_mask : Tensor, optional
            Restrict the loss to these pixels (see :meth:`reconstruction_loss`).
        mask_ratio : float, optional
            Input patch masking; default ``config.mask_ratio`` in training mode, 0 in eval mode.
        generator : torch.Generator, optional
        """
        if mask_ratio is None:
            mask_ratio = self.config.mask_ratio if self.training else 0.0
        latent = self.encode(maps, mask_ratio=mask_ratio, generator=generator)
        rec = self.decode(latent)
        return self.reconstruction_loss(rec, maps, pixel_mask), rec
