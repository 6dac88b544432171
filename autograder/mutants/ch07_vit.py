"""Known mistakes of chapter 7: patches, the patch embedding and the Vision Transformer.

Each mistake is the whole function as a student might write it with one error, registered
with the sentence that names that error; the mistakes of the two classes are subclasses of
the reference whose ``forward`` carries the error. They are tried in this order.
"""

import math

import torch

from autograder.kit.mistakes import KnownMistakes
from solutions.ch07_vit import PatchEmbedding, ViT, patchify

LEAK_MARKER = "LEAK-MARKER-autograder-ch07-2f86c9e1"

PATCHIFY = "patchify"
EMBED = "PatchEmbedding"
VIT = "ViT"

mistake = KnownMistakes()


# --- patchify(images (B, C, H, W), patch_size) -> (B, N, C*p*p) ---


def _grid(images, p):
    """(B, C, H/p, p, W/p, p) after the divisibility check."""
    B, C, H, W = images.shape
    if H % p != 0 or W % p != 0:
        raise ValueError(f"image size {H}x{W} is not a multiple of patch_size={p}")
    return images.reshape(B, C, H // p, p, W // p, p)


def _patches(images, p, order=(0, 2, 4, 1, 3, 5)):
    """(B, N, C*p*p): the grid (B, C, H/p, p, W/p, p) permuted to ``order``, flattened per
    patch (the default order is the contract's, (B, H/p, W/p, C, p, p))."""
    B, C = images.shape[:2]
    return _grid(images, p).permute(order).reshape(B, -1, C * p * p)


@mistake(
    PATCHIFY,
    "each patch is flattened in (p, p, C) order (channels last); the contract is (C, p, p), "
    "as F.unfold gives it: permute to (B, H/p, W/p, C, p, p).",
)
def patchify_channels_last(images, patch_size):
    return _patches(images, patch_size, (0, 2, 4, 3, 5, 1))  # (B, H/p, W/p, p, p, C)


@mistake(
    PATCHIFY,
    "the patches come in column-major order (down each column first); they go row by row, "
    "left to right, then top to bottom.",
)
def patchify_column_major(images, patch_size):
    return _patches(images, patch_size, (0, 4, 2, 1, 3, 5))  # (B, W/p, H/p, C, p, p)


@mistake(
    PATCHIFY,
    "the images are reshaped to (B, N, C*p*p) without a permute, so each 'patch' is a run of "
    "consecutive pixels, not a p x p square.",
)
def patchify_reshape_only(images, patch_size):
    B, C = images.shape[:2]
    _grid(images, patch_size)
    return images.reshape(B, -1, C * patch_size**2)


@mistake(
    PATCHIFY,
    "inside each patch the two pixel axes are swapped (x before y); flatten each patch as "
    "(C, row, column).",
)
def patchify_patch_transposed(images, patch_size):
    return _patches(images, patch_size, (0, 2, 4, 1, 5, 3))  # (B, H/p, W/p, C, p_x, p_y)


@mistake(
    PATCHIFY,
    "an image whose height or width is not a multiple of patch_size is cropped in silence; "
    "raise a ValueError instead.",
)
def patchify_crops(images, patch_size):
    H, W = images.shape[-2:]
    p = patch_size
    return _patches(images[:, :, : H - H % p, : W - W % p], p)


@mistake(
    PATCHIFY,
    "the result is laid out as (B, C*p*p, N), as F.unfold returns it; the contract is "
    "(B, N, C*p*p), one row per patch.",
)
def patchify_unfold_layout(images, patch_size):
    return _patches(images, patch_size).transpose(1, 2)


@mistake(
    PATCHIFY,
    "the height and width are mixed up: the grid has H/p rows of W/p patches, reshape to "
    "(B, C, H/p, p, W/p, p).",
)
def patchify_height_width_mixed(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    _grid(images, p)
    grid = images.reshape(B, C, W // p, p, H // p, p).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(B, -1, C * p * p)


@mistake(
    PATCHIFY,
    "the image axes are split as (p, H/p) instead of (H/p, p), so a 'patch' gathers pixels "
    "that lie H/p rows apart: reshape to (B, C, H/p, p, W/p, p).",
)
def patchify_strided(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    _grid(images, p)
    grid = images.reshape(B, C, p, H // p, p, W // p).permute(0, 3, 5, 1, 2, 4)
    return grid.reshape(B, -1, C * p * p)


@mistake(PATCHIFY, "the result is converted to float32; keep the images' dtype.")
def patchify_to_float32(images, patch_size):
    return _patches(images, patch_size).float()


# --- PatchEmbedding.forward(images (B, C, H, W)) -> (B, N+1, D) ---


def _channels_last(images, p):
    return _patches(images, p, (0, 2, 4, 3, 5, 1))  # (B, H/p, W/p, p, p, C)


def _column_major(images, p):
    return _patches(images, p, (0, 4, 2, 1, 3, 5))  # (B, W/p, H/p, C, p, p)


def _tokens(embedding, images, cut=patchify):
    """The projected patches (B, N, D) and the class token expanded to (B, 1, D)."""
    tokens = embedding.proj(cut(images, embedding.patch_size))
    return tokens, embedding.cls_token.expand(images.shape[0], -1, -1)


def _embed(embedding, images, cut=patchify):
    tokens, cls = _tokens(embedding, images, cut)
    return torch.cat((cls, tokens), dim=1) + embedding.pos_embed


@mistake(EMBED, "the class token is put last; it goes first: torch.cat((cls, tokens), dim=1).")
class EmbeddingClassTokenLast(PatchEmbedding):
    def forward(self, batch):
        tokens, cls = _tokens(self, batch)
        return torch.cat((tokens, cls), dim=1) + self.pos_embed


@mistake(
    EMBED,
    "the position embeddings are added before the class token is prepended (pos_embed[:, :N] "
    "on the patches); add all N+1 of them after the concatenation.",
)
class EmbeddingPositionsBeforeClassToken(PatchEmbedding):
    def forward(self, batch):
        tokens, cls = _tokens(self, batch)
        tokens = tokens + self.pos_embed[:, : tokens.shape[1]]
        return torch.cat((cls, tokens), dim=1)


@mistake(
    EMBED,
    "the class token gets no position embedding (only the patches get pos_embed[:, 1:]); add "
    "pos_embed to all N+1 tokens.",
)
class EmbeddingClassTokenWithoutPosition(PatchEmbedding):
    def forward(self, batch):
        tokens, cls = _tokens(self, batch)
        return torch.cat((cls, tokens + self.pos_embed[:, 1:]), dim=1)


@mistake(EMBED, "the position embeddings are not added.")
class EmbeddingNoPositions(PatchEmbedding):
    def forward(self, batch):
        tokens, cls = _tokens(self, batch)
        return torch.cat((cls, tokens), dim=1)


@mistake(
    EMBED,
    "the class token is missing: the output has N tokens, it needs N+1, the class token first.",
)
class EmbeddingNoClassToken(PatchEmbedding):
    def forward(self, batch):
        tokens, _ = _tokens(self, batch)
        return tokens + self.pos_embed[:, 1:]


@mistake(
    EMBED,
    "the class token is a vector of zeros; it is the learned parameter self.cls_token, "
    "expanded to the batch.",
)
class EmbeddingZeroClassToken(PatchEmbedding):
    def forward(self, batch):
        tokens, cls = _tokens(self, batch)
        return torch.cat((torch.zeros_like(cls), tokens), dim=1) + self.pos_embed


@mistake(
    EMBED,
    "the patches are flattened in (p, p, C) order (channels last); proj expects (C, p, p), "
    "as patchify gives them.",
)
class EmbeddingChannelsLast(PatchEmbedding):
    def forward(self, batch):
        return _embed(self, batch, _channels_last)


@mistake(EMBED, "the patches are taken in column-major order; patchify's order is row-major.")
class EmbeddingColumnMajor(PatchEmbedding):
    def forward(self, batch):
        return _embed(self, batch, _column_major)


@mistake(EMBED, "the projection's bias is left out: use self.proj(patches), weight and bias.")
class EmbeddingNoBias(PatchEmbedding):
    def forward(self, batch):
        patches = patchify(batch, self.patch_size)
        tokens = patches @ self.proj.weight.T
        cls = self.cls_token.expand(batch.shape[0], -1, -1)
        return torch.cat((cls, tokens), dim=1) + self.pos_embed


@mistake(
    EMBED,
    "the tokens are multiplied by sqrt(dim), as word embeddings sometimes are; a ViT's patch "
    "embedding is not scaled.",
)
class EmbeddingScaled(PatchEmbedding):
    def forward(self, batch):
        tokens, cls = _tokens(self, batch)
        tokens = torch.cat((cls, tokens), dim=1) * math.sqrt(tokens.shape[-1])
        return tokens + self.pos_embed


# --- ViT.forward(images (B, C, H, W)) -> logits (B, num_classes) ---


def _encoded(vit, images):
    x = vit.patch_embed(images)
    for block in vit.blocks:
        x = block(x)
    return x


@mistake(
    VIT,
    "the logits come from the mean of all tokens; a ViT with a class token classifies the "
    "class token, x[:, 0].",
)
class ViTMeanOfTokens(ViT):
    def forward(self, batch):
        return self.head(self.norm(_encoded(self, batch)).mean(dim=1))


@mistake(
    VIT,
    "the logits come from the mean of the patch tokens; classify the class token, x[:, 0].",
)
class ViTMeanOfPatches(ViT):
    def forward(self, batch):
        return self.head(self.norm(_encoded(self, batch))[:, 1:].mean(dim=1))


@mistake(VIT, "the logits come from the last token; the class token is the first, x[:, 0].")
class ViTLastToken(ViT):
    def forward(self, batch):
        return self.head(self.norm(_encoded(self, batch))[:, -1])


@mistake(VIT, "the final norm is skipped: apply self.norm before the head.")
class ViTNoFinalNorm(ViT):
    def forward(self, batch):
        return self.head(_encoded(self, batch)[:, 0])


@mistake(
    VIT,
    "the norm is applied after the head; it normalises the class token before the head, "
    "whose output is the logits.",
)
class ViTNormAfterHead(ViT):
    def forward(self, batch):
        return self.norm(self.head(_encoded(self, batch)[:, 0]))


@mistake(
    VIT,
    "the final norm is applied to the embeddings before the blocks; it comes after the last block.",
)
class ViTNormBeforeBlocks(ViT):
    def forward(self, batch):
        x = self.norm(self.patch_embed(batch))
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, 0])


@mistake(
    VIT,
    "the blocks' outputs are thrown away (block(x) without x = block(x)), so the tokens never "
    "go through the encoder.",
)
class ViTBlocksDiscarded(ViT):
    def forward(self, batch):
        x = self.patch_embed(batch)
        for block in self.blocks:
            block(x)
        return self.head(self.norm(x)[:, 0])


@mistake(
    VIT,
    "only the first block runs (a return inside the loop over self.blocks); run them all, "
    "then normalise and classify.",
)
class ViTFirstBlockOnly(ViT):
    def forward(self, batch):
        x = self.patch_embed(batch)
        for block in self.blocks:
            x = block(x)
            return self.head(self.norm(x)[:, 0])


@mistake(
    VIT,
    "a residual is added around each block, x = x + block(x); the blocks already carry their "
    "residual connections: x = block(x).",
)
class ViTExtraResidual(ViT):
    def forward(self, batch):
        x = self.patch_embed(batch)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x)[:, 0])


@mistake(VIT, "a softmax is applied to the logits; return the head's output as it is.")
class ViTSoftmax(ViT):
    def forward(self, batch):
        return torch.softmax(self.head(self.norm(_encoded(self, batch))[:, 0]), dim=-1)


MUTANTS = mistake.mutants
