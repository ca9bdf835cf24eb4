"""Text encoders: the weight-free tiny-hash encoder, and the official Gemma-2 recipe on a tiny random Gemma-2
with a tokenizer trained in the test (saved with save_pretrained, loaded offline through load_text_encoder)."""
import pytest
import torch

from runtime import weights
from runtime.text_encoder import (
    SANA_WM_CHI_PROMPT,
    Gemma2TextEncoder,
    TinyTextEncoder,
    load_text_encoder,
)
from runtime.weights import IncompatibleWeightsError, MissingWeightsError

L = 300          # the official recipe's length
WIDTH = 32       # caption channels of the tiny Gemma


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.delenv(weights.ENV_ALLOW_DOWNLOAD, raising=False)
    return tmp_path / "home"


# Tiny hash encoder -----------------------------------------------------------------------------------------
def test_tiny_hash_shapes_mask_and_determinism():
    enc = load_text_encoder("tiny-hash", caption_channels=64, max_length=16, device="cpu", dtype=torch.float32)
    assert isinstance(enc, TinyTextEncoder)
    emb, mask = enc.encode(["a cat", "", "x" * 40])
    assert emb.shape == (3, 16, 64) and mask.shape == (3, 16) and mask.dtype == torch.long
    assert mask[0].tolist() == [1] * 6 + [0] * 10            # BOS + 5 bytes
    assert mask[1].tolist() == [1] + [0] * 15                # BOS only
    assert mask[2].sum() == 16                               # truncated to L
    assert torch.equal(emb[0, 0], emb[1, 0])                 # same BOS (+ position 0) for every prompt
    assert (emb[0, 6:] == 0).all()                           # padding is zero
    again = TinyTextEncoder(caption_channels=64, max_length=16).encode(["a cat", "", "x" * 40])[0]
    assert torch.equal(emb, again)                           # seeded: identical across instances / machines
    other = enc.encode(["a dog"])[0]
    assert not torch.equal(other[0, :6], emb[0, :6])
    utf8 = enc.encode(["é"])[1]
    assert utf8[0].sum() == 3                                # BOS + 2 UTF-8 bytes


def test_cache_makes_repeated_prompts_free():
    enc = TinyTextEncoder(caption_channels=8, max_length=4)
    enc.encode(["a", "b"])
    assert (enc.forward_prompts, enc.cache_hits) == (2, 0)
    e1, _ = enc.encode(["b", "a", "a"])
    assert (enc.forward_prompts, enc.cache_hits) == (2, 3)
    e1[:] = 0                                                # callers' edits must not reach the cache
    assert enc.encode(["a"])[0].abs().sum() > 0
    enc.encode(["a"], negative=True)                         # negative prompts are their own entries
    assert enc.forward_prompts == 3


def test_cache_is_bounded():
    enc = TinyTextEncoder(caption_channels=8, max_length=4, cache_size=2)
    for p in ["a", "b", "c"]:
        enc.encode([p])
    assert len(enc._cache) == 2 and ("a" not in [k for _, k in enc._cache])


# Gemma-2 recipe ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = list(SANA_WM_CHI_PROMPT) + ["a red car on a wet street at night", "a cat sleeping in the sun"]
    tok.train_from_iterator(corpus * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                                pad_token="<pad>", unk_token="<unk>", padding_side="right")
    config = transformers.Gemma2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
        sliding_window=2048, pad_token_id=tok.token_to_id("<pad>"), bos_token_id=tok.token_to_id("<bos>"),
        eos_token_id=tok.token_to_id("<eos>"))
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config)
    d = tmp_path_factory.mktemp("gemma-2-tiny")
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def gemma(gemma_dir):
    return load_text_encoder(gemma_dir, caption_channels=WIDTH, max_length=L, device="cpu", dtype=torch.float32)


def test_gemma_recipe_matches_a_direct_computation(gemma, gemma_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert isinstance(gemma, Gemma2TextEncoder)
    prompt = "a red car on a wet street at night"
    emb, mask = gemma.encode([prompt])
    assert emb.shape == (1, L, WIDTH) and mask.shape == (1, L)

    tok = AutoTokenizer.from_pretrained(gemma_dir, local_files_only=True)
    tok.padding_side = "right"
    decoder = AutoModelForCausalLM.from_pretrained(gemma_dir, local_files_only=True).get_decoder().eval()
    chi = "\n".join(SANA_WM_CHI_PROMPT)
    n_chi = len(tok.encode(chi))
    total = n_chi + L - 2
    ids = tok([chi + prompt], padding="max_length", max_length=total, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = decoder(**ids).last_hidden_state
    keep = [0] + list(range(total - L + 1, total))
    assert torch.allclose(emb[0], hidden[0, keep], atol=1e-6)
    assert torch.equal(mask[0], ids["attention_mask"][0, keep])
    # The window is BOS + the last chi token + the prompt's tokens, then right padding.
    n_full = len(tok.encode(chi + prompt))
    assert mask[0, 0] == 1 and int(mask[0].sum()) == 1 + (n_full - n_chi + 1)
    assert mask[0, 1:].tolist() == sorted(mask[0, 1:].tolist(), reverse=True)


def test_gemma_negative_prompt_has_no_instruction(gemma):
    emb, mask = gemma.encode([""], negative=True)
    assert emb.shape == (1, L, WIDTH) and mask[0].tolist() == [1] + [0] * (L - 1)
    pos_emb, pos_mask = gemma.encode([""])
    assert int(pos_mask.sum()) == 2                  # BOS + the chi prompt's last token
    assert torch.allclose(emb[0, 0], pos_emb[0, 0], atol=1e-6)     # causal: BOS sees only itself
    assert not torch.allclose(emb[0, 1], pos_emb[0, 1])


def test_gemma_batching_and_cache(gemma):
    calls = []
    handle = gemma.model.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        gemma.clear_cache()
        a = gemma.encode(["a cat sleeping in the sun"])
        both = gemma.encode(["a red car", "a cat sleeping in the sun"])
        assert len(calls) == 2                        # the second call ran only "a red car"
        assert torch.equal(both[0][1], a[0][0])
        again = gemma.encode(["a red car", "a cat sleeping in the sun", "a red car"])
        assert len(calls) == 2 and gemma.cache_hits >= 4
        fresh = Gemma2TextEncoder(gemma.model, gemma.tokenizer, caption_channels=WIDTH, max_length=L)
        batched = fresh.encode(["a red car", "a cat sleeping in the sun"])[0]
        assert torch.allclose(batched, again[0][:2], atol=1e-5)   # right padding: batch rows independent
    finally:
        handle.remove()


def test_gemma_by_name_offline(gemma_dir, home):
    with pytest.raises(MissingWeightsError) as info:
        load_text_encoder("gemma-2-2b-it", caption_channels=WIDTH, max_length=L)
    assert "text encoder (gemma-2-2b-it)" in str(info.value) and "\n" not in str(info.value)
    target = home / "Efficient-Large-Model" / "gemma-2-2b-it"
    target.parent.mkdir(parents=True)
    target.symlink_to(gemma_dir, target_is_directory=True)
    enc = load_text_encoder("gemma-2-2b-it", caption_channels=WIDTH, max_length=L)
    assert enc.encode(["a cat"])[0].shape == (1, L, WIDTH)
    with pytest.raises(IncompatibleWeightsError, match="width 32 != caption_channels 2304"):
        load_text_encoder(gemma_dir, caption_channels=2304, max_length=L)
