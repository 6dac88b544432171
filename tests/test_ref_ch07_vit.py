"""The chapter 7 references against PyTorch (float64, CPU): values, gradients, semantics.

On ``meta``, on CUDA and for unmodified inputs every reference is checked from the one table
of ``test_references.py``.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import F64, assert_close, randn
from torch import nn

from solutions.ch07_vit import PatchEmbedding, ViT, patchify

# Distinct sizes: batch 2, 3 channels, 8x12 images, patches 4x4 (N = 2*3 = 6 patches of
# 48 values), model dim 12, 3 heads, MLP 20, depth 2, 5 classes.
B, C, HEIGHT, WIDTH, P = 2, 3, 8, 12, 4
N = (HEIGHT // P) * (WIDTH // P)
DIM, HEADS, MLP, DEPTH, CLASSES = 12, 3, 20, 2, 5


def unfold_patches(images, p):
    """PyTorch's patches: (B, N, C*p*p)."""
    return F.unfold(images, p, stride=p).transpose(1, 2)


@pytest.fixture
def images(gen):
    return randn(B, C, HEIGHT, WIDTH, generator=gen)


# patchify


@pytest.mark.parametrize(
    "shape, p",
    [((B, C, HEIGHT, WIDTH), P), ((B, C, HEIGHT, WIDTH), 2), ((B, C, HEIGHT, WIDTH), 1),
     ((3, 1, 6, 6), 6), ((1, 2, 10, 4), 2)],
    ids=str,
)  # fmt: skip
def test_patchify_matches_unfold(gen, shape, p):
    images = randn(*shape, generator=gen)
    patches = patchify(images, p)
    batch, channels, height, width = shape
    assert patches.shape == (batch, (height // p) * (width // p), channels * p * p)
    assert_close(patches, unfold_patches(images, p))


def test_patchify_order_is_row_major_and_channel_first(images):
    patches = patchify(images, P)
    cols = WIDTH // P
    for row in range(HEIGHT // P):
        for col in range(cols):
            block = images[:, :, row * P : (row + 1) * P, col * P : (col + 1) * P]  # (B, C, p, p)
            assert_close(patches[:, row * cols + col], block.reshape(B, C * P * P))


def test_patchify_accepts_non_contiguous_input(images):
    channels_last = images.contiguous(memory_format=torch.channels_last)
    assert_close(patchify(channels_last, P), unfold_patches(images, P))
    transposed = images.transpose(2, 3)  # (B, C, 12, 8)
    assert_close(patchify(transposed, P), unfold_patches(transposed.contiguous(), P))


@pytest.mark.parametrize("height, width", [(9, 12), (8, 10), (3, 3)])
def test_patchify_rejects_sizes_not_multiple_of_patch(gen, height, width):
    with pytest.raises(ValueError):
        patchify(randn(B, C, height, width, generator=gen), P)


def test_patchify_gradients_match_unfold(gen, images):
    ours, theirs = images.clone().requires_grad_(), images.clone().requires_grad_()
    upstream = randn(B, N, C * P * P, generator=gen)
    (patchify(ours, P) * upstream).sum().backward()
    (unfold_patches(theirs, P) * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, **F64)


# PatchEmbedding


@pytest.fixture
def embedding():
    torch.manual_seed(0)
    return PatchEmbedding((HEIGHT, WIDTH), P, C, DIM).to(torch.float64)


def unfold_embedding(embedding, images):
    """The patch embedding composed from PyTorch's pieces."""
    tokens = F.linear(unfold_patches(images, P), embedding.proj.weight, embedding.proj.bias)
    cls = embedding.cls_token.expand(images.shape[0], 1, DIM)
    return torch.cat((cls, tokens), dim=1) + embedding.pos_embed


def test_patch_embedding_attributes(embedding):
    assert embedding.patch_size == P
    assert isinstance(embedding.proj, nn.Linear)
    assert embedding.proj.weight.shape == (DIM, C * P * P)
    assert isinstance(embedding.cls_token, nn.Parameter)
    assert isinstance(embedding.pos_embed, nn.Parameter)
    assert embedding.cls_token.shape == (1, 1, DIM)
    assert embedding.pos_embed.shape == (1, N + 1, DIM)
    for parameter in (embedding.cls_token, embedding.pos_embed):
        assert (parameter != 0).any(), "initialised to zeros"
        assert parameter.abs().max() < 0.1, "initialised too large"


def test_patch_embedding_accepts_an_int_image_size():
    embedding = PatchEmbedding(8, 2, C, DIM)
    assert embedding.pos_embed.shape == (1, 16 + 1, DIM)
    assert embedding(torch.randn(B, C, 8, 8)).shape == (B, 17, DIM)


def test_patch_embedding_matches_composition(embedding, images):
    tokens = embedding(images)
    assert tokens.shape == (B, N + 1, DIM)
    assert_close(tokens, unfold_embedding(embedding, images))
    assert_close(tokens[:, 0], (embedding.cls_token[0] + embedding.pos_embed[:, 0]).expand(B, DIM))


def test_patch_embedding_gradients_match_composition(gen, embedding, images):
    upstream = randn(B, N + 1, DIM, generator=gen)
    ours = images.clone().requires_grad_()
    (embedding(ours) * upstream).sum().backward()
    our_grads = {name: p.grad.clone() for name, p in embedding.named_parameters()}
    embedding.zero_grad()
    theirs = images.clone().requires_grad_()
    (unfold_embedding(embedding, theirs) * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, **F64)
    for name, parameter in embedding.named_parameters():
        torch.testing.assert_close(our_grads[name], parameter.grad, **F64, msg=name)


# ViT


@pytest.fixture
def vit(gen):
    torch.manual_seed(0)
    model = ViT((HEIGHT, WIDTH), P, C, CLASSES, DIM, DEPTH, HEADS, MLP).to(torch.float64)
    with torch.no_grad():  # move the norms off their initial ones and zeros
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.2 * randn(*parameter.shape, generator=gen))
    return model


def composed_vit(vit, images):
    """The ViT composed from PyTorch's pieces and the model's own blocks."""
    x = unfold_embedding(vit.patch_embed, images)  # (B, N+1, D)
    for block in vit.blocks:
        x = block(x)
    cls = F.layer_norm(x[:, 0], (DIM,), vit.norm.weight, vit.norm.bias, eps=vit.norm.eps)
    return F.linear(cls, vit.head.weight, vit.head.bias)


def test_vit_attributes(vit):
    assert isinstance(vit.patch_embed, PatchEmbedding)
    assert isinstance(vit.blocks, nn.ModuleList) and len(vit.blocks) == DEPTH
    for block in vit.blocks:
        assert isinstance(block, nn.TransformerEncoderLayer)
        assert block.norm_first and block.self_attn.batch_first
        assert block.activation is F.gelu
        assert block.linear1.out_features == MLP and block.self_attn.num_heads == HEADS
        assert block.dropout.p == block.dropout1.p == block.dropout2.p == 0.0
    assert isinstance(vit.norm, nn.LayerNorm) and vit.norm.normalized_shape == (DIM,)
    assert isinstance(vit.head, nn.Linear) and vit.head.weight.shape == (CLASSES, DIM)


def test_vit_matches_composition(vit, images):
    logits = vit(images)
    assert logits.shape == (B, CLASSES)
    assert_close(logits, composed_vit(vit, images))


def test_vit_matches_composition_in_inference(vit, images):
    vit.eval()
    with torch.no_grad():
        assert_close(vit(images), composed_vit(vit, images))


def test_vit_gradients_match_composition(gen, vit, images):
    upstream = randn(B, CLASSES, generator=gen)
    ours = images.clone().requires_grad_()
    (vit(ours) * upstream).sum().backward()
    our_grads = {name: p.grad.clone() for name, p in vit.named_parameters()}
    vit.zero_grad()
    theirs = images.clone().requires_grad_()
    (composed_vit(vit, theirs) * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, **F64)
    for name, parameter in vit.named_parameters():
        assert parameter.grad is not None, name
        torch.testing.assert_close(our_grads[name], parameter.grad, **F64, msg=name)
