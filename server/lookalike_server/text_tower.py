"""A card's text tower: prompts to token ids (the `tokenizers` library) and token ids to raw embeddings
(ONNX Runtime). Checked at start-up against the card: inputs, output and dimension."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .errors import InvalidArgument
from .model_card import ModelCard

_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer with its own padding and truncation off: lookalike pads, and refuses long prompts."""
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as e:  # the library raises a bare Exception with serde's message
        raise ValueError(f"tokenizer {path} does not load with the tokenizers library: {e}") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class TextEncoder:
    """Runs the card's text network on a batch of tokenized prompts and returns raw (unnormalised) vectors."""

    def __init__(self, card: ModelCard, session: ort.InferenceSession) -> None:
        assert card.text is not None
        self.card = card
        self.tower = card.text
        self.tokenizer = load_tokenizer(str(self.tower.tokenizer_path))
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        where = f"model {card.name}: text encoder {self.tower.model_path.name}"
        for name in (self.tower.input_ids, self.tower.attention_mask):
            if name and name not in inputs:
                raise ValueError(f"{where} has no input {name!r}; it has {sorted(inputs)}")
        if self.tower.output_name not in outputs:
            raise ValueError(f"{where} has no output {self.tower.output_name!r}; it has {sorted(outputs)}")
        self._dtypes = {name: _INT_TYPES.get(inputs[name].type, np.int64)
                        for name in (self.tower.input_ids, self.tower.attention_mask) if name}
        probe = self.embed([self.tokenize("a photo")])
        if probe.shape != (1, card.dimension):
            raise ValueError(f"{where} returns vectors of shape {probe.shape[1:]} for one prompt; the card's "
                             f"[output] dimension is {card.dimension}, and both towers must share it")

    @property
    def context_length(self) -> int:
        return self.tower.context_length

    def tokenize(self, text: str, what: str = "text") -> np.ndarray:
        """The prompt's token ids, start and end tokens included; InvalidArgument if empty or too long."""
        if not text.strip():
            raise InvalidArgument(f"{what} is empty: a prompt needs at least one word")
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.context_length:
            raise InvalidArgument(
                f"{what} is {len(ids)} tokens long with its start and end tokens; model {self.card.name!r} "
                f"reads at most {self.context_length}: shorten it (prompts are refused, never cut)"
            )
        return np.asarray(ids, dtype=np.int64)

    def embed(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        """Token id arrays to (N, dimension) float32, not yet normalised."""
        width = self.context_length if self.tower.padding == "max_length" else max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), self.tower.pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), width), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
            mask[row, : len(prompt)] = 1
        feeds = {self.tower.input_ids: ids.astype(self._dtypes[self.tower.input_ids], copy=False)}
        if self.tower.attention_mask:
            feeds[self.tower.attention_mask] = mask.astype(self._dtypes[self.tower.attention_mask], copy=False)
        (out,) = self.session.run([self.tower.output_name], feeds)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(len(prompts), -1)
