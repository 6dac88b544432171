"""Chapter 7 reference: patches, the patch embedding and the Vision Transformer."""

import torch
from torch import nn

LEAK_MARKER = "LEAK-MARKER-solutions-ch07-e299d870"


def patchify(images, patch_size):
    """Cut images into non-overlapping square patches and flatten each one.

    Patches come in row-major order (left to right, then top to bottom), each flattened
    in (C, p, p) order, as ``F.unfold(images, p, stride=p).transpose(1, 2)`` gives them.

    Args:
        images: (B, C, H, W) images; H and W multiples of p.
        patch_size: p.

    Returns:
        (B, N, C*p*p) patches, N = (H/p) * (W/p).

    Raises:
        ValueError: when H or W is not a multiple of p.
    """
    B, C, H, W = images.shape
    p = patch_size
    if H % p != 0 or W % p != 0:
        raise ValueError(f"image size {H}x{W} is not a multiple of patch_size={p}")
    rows, cols = H // p, W // p
    grid = images.reshape(B, C, rows, p, cols, p)  # (B, C, H/p, p, W/p, p)
    grid = grid.permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return grid.reshape(B, rows * cols, C * p * p)  # (B, N, C*p*p)


class PatchEmbedding(nn.Module):
    """Patches to tokens: a linear projection, a class token first, position embeddings.

    ``image_size`` is an int (square images) or a pair (H, W).
    """

    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        num_patches = (height // patch_size) * (width // patch_size)
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, images):
        """Embed a batch of images as token sequences.

        Args:
            images: (B, C, H, W) images of the size given at construction.

        Returns:
            (B, N+1, D) tokens: the class token, then one per patch, plus positions.
        """
        B = images.shape[0]
        patches = patchify(images, self.patch_size)  # (B, N, C*p*p)
        tokens = self.proj(patches)  # (B, N, D)
        cls = self.cls_token.expand(B, -1, -1)  # (B, 1, D)
        tokens = torch.cat((cls, tokens), dim=1)  # (B, N+1, D)
        return tokens + self.pos_embed  # (B, N+1, D)


class ViT(nn.Module):
    """Vision Transformer: patch embedding, pre-norm encoder blocks, a linear classifier."""

    def __init__(
        self, image_size, patch_size, in_channels, num_classes, dim, depth, num_heads, mlp_dim
    ):
        super().__init__()
        self.patch_embed = PatchEmbedding(image_size, patch_size, in_channels, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim,
                num_heads,
                mlp_dim,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images):
        """Classify a batch of images.

        Args:
            images: (B, C, H, W) images.

        Returns:
            (B, num_classes) logits, read from the class token.
        """
        x = self.patch_embed(images)  # (B, N+1, D)
        for block in self.blocks:
            x = block(x)  # (B, N+1, D)
        cls = self.norm(x)[:, 0]  # (B, D): the class token, normalised
        return self.head(cls)  # (B, num_classes)
