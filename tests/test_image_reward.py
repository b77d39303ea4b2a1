"""ImageReward on a state dict in the published format (random values).

`ImageReward.pt` is `torch.save(ImageReward.state_dict())`: `blip.visual_encoder.*` (BLIP's timm
ViT-L/16 at 224 px: cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1,attn.qkv,attn.proj,
norm2,mlp.fc1,mlp.fc2}, norm), `blip.text_encoder.*` (BLIP's med.py BERT with cross-attention,
including the persistent int64 `embeddings.position_ids` buffer), the unused `blip.vision_proj`
and `blip.text_proj`, and `mlp.layers.{0,2,4,6,7}`. The full model is 446.7M floats (~1.8 GB), so the file here has
the same keys, container and dtypes with a small config: ViT width 128 and BERT width 128 (2 heads
of 64 each, as the published widths have), 2 layers each, the published
224 px / patch 16 and the MLP's published 1024-128-64-16 widths; the BERT vocabulary is a small
word list plus BLIP's two added tokens (the published one is bert-base-uncased's 30,522 + 2).

The reference is ImageReward.score computed independently: BLIP's ViT and med.py BERT written out
here in torch.nn.functional from the publisher's vit.py / med.py (extended attention mask
(1 - mask) * -10000), the publisher's torchvision transform, the tokenizer called per prompt as
`score` does, and (mlp(cls) - 0.16717362830052426) / 1.0333394966054072.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.metrics.image_reward import ImageReward

W, H, DEPTH, LAYERS, HEADS = 128, 128, 2, 2, 2
WORDS = "a photo of the doctor nurse red fox in snow watercolor painting at dusk lighthouse an old".split()
PROMPTS = ["a photo of a doctor", "a watercolor painting of a red fox in the snow",
           " ".join(["an old lighthouse at dusk"] * 10)]  # > 35 tokens: cut as the publisher cuts


def published_state(vocab: int, width: int = W, hidden: int = H, depth: int = DEPTH, layers: int = LAYERS,
                    specs_only: bool = False) -> dict:
    """ImageReward.pt's entries: random tensors, or with specs_only their (shape, floating) as
    tensor_specs gives them (for the full size, which is not built)."""
    gen = torch.Generator().manual_seed(0)
    W, H, DEPTH, LAYERS = width, hidden, depth, layers  # noqa: N806 (the module's names, resized)

    def rand(*shape: int, scale: float | None = None):
        if specs_only:
            return (tuple(shape), True)
        std = scale if scale is not None else 1 / math.sqrt(shape[-1])
        return torch.randn(*shape, generator=gen) * std

    def linear(prefix: str, out: int, inp: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": rand(out, inp), f"{prefix}.bias": rand(out, scale=0.02)}

    def norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
        weight = rand(width, scale=0.1)
        return {f"{prefix}.weight": weight if specs_only else 1 + weight, f"{prefix}.bias": rand(width, scale=0.1)}

    v = "blip.visual_encoder."
    state = {v + "cls_token": rand(1, 1, W, scale=0.5), v + "pos_embed": rand(1, 197, W, scale=0.5),
             v + "patch_embed.proj.weight": rand(W, 3, 16, 16, scale=0.03),
             v + "patch_embed.proj.bias": rand(W, scale=0.02)}
    for i in range(DEPTH):
        b = f"{v}blocks.{i}."
        state |= norm(b + "norm1", W) | linear(b + "attn.qkv", 3 * W, W) | linear(b + "attn.proj", W, W)
        state |= norm(b + "norm2", W) | linear(b + "mlp.fc1", 4 * W, W) | linear(b + "mlp.fc2", W, 4 * W)
    state |= norm(v + "norm", W)
    t = "blip.text_encoder."
    state |= {t + "embeddings.word_embeddings.weight": rand(vocab, H, scale=1.0),
              t + "embeddings.position_embeddings.weight": rand(512, H, scale=0.5),
              t + "embeddings.position_ids": ((1, 512), False) if specs_only else torch.arange(512).expand(1, -1).clone()}
    state |= norm(t + "embeddings.LayerNorm", H)
    for i in range(LAYERS):
        b = f"{t}encoder.layer.{i}."
        for kind, width in (("attention", H), ("crossattention", W)):
            state |= linear(f"{b}{kind}.self.query", H, H) | linear(f"{b}{kind}.self.key", H, width)
            state |= linear(f"{b}{kind}.self.value", H, width) | linear(f"{b}{kind}.output.dense", H, H)
            state |= norm(f"{b}{kind}.output.LayerNorm", H)
        state |= linear(b + "intermediate.dense", 4 * H, H) | linear(b + "output.dense", H, 4 * H)
        state |= norm(b + "output.LayerNorm", H)
    state |= linear("blip.vision_proj", 256, W) | linear("blip.text_proj", 256, H)
    for i, (out, inp) in zip((0, 2, 4, 6, 7), ((1024, H), (128, 1024), (64, 128), (16, 64), (1, 16))):
        state |= linear(f"mlp.layers.{i}", out, inp)
    return state


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    from transformers import BertTokenizer

    root = tmp_path_factory.mktemp("imagereward")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "tokenizer")
    state = published_state(len(vocab) + 2)  # BLIP adds [DEC] and [ENC]
    torch.save(state, root / "ImageReward.pt")
    return state, root


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(2)
    sizes = ((256, 256), (300, 220), (200, 260))
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


# ---- the publisher's networks, written out from vit.py and med.py ------------------------------

def ln(x, sd, key, eps):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], eps)


def lin(x, sd, key):
    return F.linear(x, sd[key + ".weight"], sd[key + ".bias"])


def heads_of(x, n):
    return x.reshape(*x.shape[:2], n, -1).transpose(1, 2)


def ref_vit(sd, x):
    p = "blip.visual_encoder."
    x = F.conv2d(x, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[p + "cls_token"].expand(len(x), -1, -1), x], 1) + sd[p + "pos_embed"]
    for i in range(DEPTH):
        b = f"{p}blocks.{i}."
        h = ln(x, sd, b + "norm1", 1e-6)
        q, k, v = lin(h, sd, b + "attn.qkv").reshape(*h.shape[:2], 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1)
        x = x + lin((a @ v).transpose(1, 2).reshape(h.shape), sd, b + "attn.proj")
        x = x + lin(F.gelu(lin(ln(x, sd, b + "norm2", 1e-6), sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
    return ln(x, sd, p + "norm", 1e-6)


def ref_attention(sd, key, x, context, additive_mask):
    q, k, v = (heads_of(lin(t, sd, f"{key}.self.{n}"), HEADS)
               for t, n in ((x, "query"), (context, "key"), (context, "value")))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive_mask
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
    return ln(lin(out, sd, f"{key}.output.dense") + x, sd, f"{key}.output.LayerNorm", 1e-12)


def ref_bert(sd, ids, mask, image_embeds):
    p = "blip.text_encoder."
    x = (sd[p + "embeddings.word_embeddings.weight"][ids]
         + sd[p + "embeddings.position_embeddings.weight"][:ids.shape[1]])
    x = ln(x, sd, p + "embeddings.LayerNorm", 1e-12)
    extended = (1.0 - mask[:, None, None, :].float()) * -10000.0  # med.py get_extended_attention_mask
    for i in range(LAYERS):
        b = f"{p}encoder.layer.{i}."
        x = ref_attention(sd, b + "attention", x, x, extended)
        x = ref_attention(sd, b + "crossattention", x, image_embeds, 0.0)  # all image tokens attended
        x = ln(lin(F.gelu(lin(x, sd, b + "intermediate.dense")), sd, b + "output.dense") + x, sd,
               b + "output.LayerNorm", 1e-12)
    return x


def reference_scores(sd, tokenizer, images, prompts) -> np.ndarray:
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    transform = Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224),
                         lambda im: im.convert("RGB"), ToTensor(),
                         Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    out = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts):
            text = tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
            image_embeds = ref_vit(sd, transform(image)[None])
            cls = ref_bert(sd, text.input_ids, text.attention_mask, image_embeds)[:, 0, :]
            r = cls
            for i in (0, 2, 4, 6, 7):  # MLP: Linear, Dropout, ..., no activation
                r = lin(r, sd, f"mlp.layers.{i}")
            out.append(float((r - 0.16717362830052426) / 1.0333394966054072))
    return np.array(out)


def test_image_reward_equals_the_publishers_score(published):
    from transformers import BertTokenizer

    state, root = published
    scorer = ImageReward(weights=str(root / "ImageReward.pt"), tokenizer=str(root / "tokenizer"), batch_size=2)
    assert scorer.available() is None
    scorer.check()
    images = photos()
    got = scorer.score(images, pd.DataFrame({"prompt": PROMPTS}))["imagereward.score"].to_numpy()

    tokenizer = BertTokenizer.from_pretrained(str(root / "tokenizer"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    assert len(tokenizer) == state["blip.text_encoder.embeddings.word_embeddings.weight"].shape[0]
    assert len(tokenizer(PROMPTS[2]).input_ids) > 35  # the long prompt is cut
    expected = reference_scores(state, tokenizer, images, PROMPTS)
    # Measured 1.6e-7; the ViT's LayerNorm eps at transformers' default 1e-5 instead of BLIP's 1e-6
    # moves the scores by 3.5e-6, padding/cutting at 77 tokens instead of 35 by 0.017.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.ptp(got) > 0.01


def test_image_reward_refuses_wrong_files_and_skips_when_absent(published, tmp_path, monkeypatch):
    state, root = published
    bad = dict(state)
    bad["blip.visual_encoder.blocks.1.attn.qkv.weight"] = torch.zeros(3 * W, W + 1)
    torch.save(bad, tmp_path / "shape.pt")
    extra = dict(state) | {"blip.itm_head.weight": torch.zeros(2, H)}
    torch.save(extra, tmp_path / "extra.pt")
    missing = {k: v for k, v in state.items() if not k.startswith("mlp.layers.7")}
    torch.save(missing, tmp_path / "missing.pt")
    for name, words in (("shape", "blocks.1.attn.qkv"), ("extra", "blip.itm_head.weight"),
                        ("missing", "7.weight")):
        with pytest.raises(ValueError) as e:
            ImageReward(weights=str(tmp_path / f"{name}.pt")).check()
        assert "\n" not in str(e.value) and words in str(e.value), str(e.value)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("BENCH_IMAGEREWARD_WEIGHTS", raising=False)
    reason = ImageReward().available()
    assert reason and "\n" not in reason and "hf download THUDM/ImageReward ImageReward.pt" in reason
    (tmp_path / ".cache" / "ImageReward").mkdir(parents=True)
    (tmp_path / ".cache" / "ImageReward" / "ImageReward.pt").symlink_to(root / "ImageReward.pt")
    reason = ImageReward().available()  # the package's own cache is found; the tokenizer is not
    assert reason and "bert-base-uncased" in reason
    assert ImageReward(tokenizer=str(root / "tokenizer")).available() is None
    # The default tokenizer from the HF cache, under its legacy id (no organisation).
    repo = tmp_path / "hub" / "models--bert-base-uncased"
    (repo / "snapshots" / ("1" * 40)).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    (repo / "snapshots" / ("1" * 40) / "vocab.txt").symlink_to(root / "vocab.txt")
    assert ImageReward().available() is None


def test_published_size_is_read_from_the_shapes(tmp_path):
    """The full ImageReward.pt's shapes (ViT-L/16 at 224: width 1024, 24 blocks; BERT-base with
    cross-attention to 1024-d image tokens, vocabulary 30,524) pass the check and give BLIP's
    configuration: 16 and 12 heads, 224 px, patch 16. Networks built on the meta device."""
    from bench.metrics.image_reward import build_networks, check_parts, split_state

    specs = published_state(30524, width=1024, hidden=768, depth=24, layers=12, specs_only=True)
    parts = split_state(specs)
    check_parts(tmp_path / "ImageReward.pt", parts)
    with torch.device("meta"):
        vit, bert, head = build_networks(parts)
    assert (vit.config.num_attention_heads, vit.config.num_hidden_layers, vit.config.image_size,
            vit.config.patch_size, vit.config.intermediate_size) == (16, 24, 224, 16, 4096)
    assert (bert.config.num_attention_heads, bert.config.num_hidden_layers, bert.config.vocab_size,
            bert.config.encoder_hidden_size, bert.config.max_position_embeddings) == (12, 12, 30524, 1024, 512)
    n = sum(p.numel() for net in (vit, bert, head) for p in net.parameters())
    assert 440e6 < n < 450e6, n  # 446.2M used + 0.5M in vision_proj/text_proj: ~1.8 GB of float32
