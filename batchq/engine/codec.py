"""Between text and tokens: prompts through the chat template, generated ids back to text.

The one place that knows how a model's output is read: where it ends (its end tokens, or a
stop string), what the finish reason is, how many tokens count, and, for a thinking model
(Qwen3), which tokens are its reasoning (`<think>...</think>`) and which its answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from batchq.engine.types import Completion, PromptIn, WorkItem


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends an output: the model's generation config and the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


# A placeholder for a shielded string: private-use characters no tokenizer gives a meaning to.
_SHIELD = re.compile("\ue000(\\d+)\ue001")


class PromptCodec:
    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], ignore_eos: bool = False):
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        # Benchmarks on random weights set this so every row generates its full limit.
        self.ignore_eos = ignore_eos
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else self.eos_ids[0]
        added = tokenizer.get_added_vocab()
        # A thinking model's tokenizer has both; other models' outputs have no reasoning.
        self.think_ids: tuple[int, int] | None = (
            (added["<think>"], added["</think>"]) if "<think>" in added and "</think>" in added
            else None)

    @property
    def stop_ids(self) -> list[int]:
        """What `generate` stops on. An empty list, not None: None would let it fall back to
        the model's own end token."""
        return [] if self.ignore_eos else self.eos_ids

    def encode(self, prompt: PromptIn) -> list[int]:
        return self.encode_all([prompt])[0]

    def encode_all(self, prompts: Sequence[PromptIn]) -> list[list[int]]:
        """Each prompt's ids. The texts that are tokenized whole go through the tokenizer in
        one call: its batch took 17 ms for a chunk's 256 short prompts, one call each 45."""
        rendered = [self._rendered(prompt) for prompt in prompts]
        texts = [text for text in rendered if isinstance(text, str)]
        tokenized = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"]
                         if texts else ())
        return [list(next(tokenized)) if isinstance(text, str) else text for text in rendered]

    def _rendered(self, prompt: PromptIn) -> str | list[int]:
        """The text to tokenize whole, or the ids where they cannot come from one call."""
        if prompt.token_ids is not None:
            return list(prompt.token_ids)
        if prompt.messages is None:
            # A raw completion prompt keeps its literal control tokens: that is what raw means.
            return prompt.text or ""
        messages, literals = self._shielded(prompt.messages)
        extra: dict[str, Any] = ({} if prompt.settings.thinking is None
                                 else {"enable_thinking": prompt.settings.thinking})
        if prompt.calls_tools:  # tool_choice none: the model is not told of them at all
            extra["tools"] = [dict(tool) for tool in prompt.tools or ()]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True, **extra)
        if not literals:
            return str(text)
        # The template's own control tokens are parsed; a shielded string is only text.
        ids: list[int] = []
        for n, piece in enumerate(_SHIELD.split(text)):
            ids += self._tokens(piece) if n % 2 == 0 else self._plain(literals[int(piece)])
        return ids

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _shielded(self, messages: Sequence[Mapping[str, Any]]
                  ) -> tuple[list[dict[str, Any]], list[str]]:
        """Messages whose control-token strings (`<|im_end|>`, `<think>`, any added token) are
        swapped for placeholders, so a document or a user cannot open a turn of their own:
        the chat's structure comes from the template alone."""
        added = self._added_pattern()
        literals: list[str] = []

        def shield(match: re.Match[str]) -> str:
            literals.append(match.group(0))
            return f"\ue000{len(literals) - 1}\ue001"

        out = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                message = {**message, "content": added.sub(shield, content)}
            out.append(dict(message))
        return out, literals

    def _added_pattern(self) -> re.Pattern[str]:
        if not hasattr(self, "_added"):
            # The placeholder's own characters are shielded too: content cannot forge one.
            strings = [*self.tokenizer.get_added_vocab(), "\ue000", "\ue001"]
            self._added = re.compile("|".join(map(re.escape, sorted(strings, key=len,
                                                                    reverse=True))))
        return self._added

    def _plain(self, text: str) -> list[int]:
        """`text` through the tokenizer's normalizer, pre-tokenizer and BPE, never its added
        vocabulary: `<|im_end|>` comes out as the characters `<|im_end|>`."""
        backend = self.tokenizer.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [
            (text, None)]
        return [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]

    def decode(self, item: WorkItem, row: Sequence[int]) -> Completion:
        """One row of generated ids as a completion, cut at the first end token or stop string,
        its reasoning (if the model thought) apart from its answer."""
        row = list(row[:item.limit])  # a padded batch may run past this row's own limit
        end = None if self.ignore_eos else next(
            (i for i, tok in enumerate(row) if tok in self.eos_ids), None)
        tokens = row if end is None else row[:end]
        finish = "length" if end is None else "stop"
        counted = len(tokens) + (0 if end is None else 1)  # the stop token was generated too
        thought, answer = self.split_reasoning(item.ids, tokens)
        reasoning = None if thought is None else self._text(thought).strip()
        text = self._text(answer)
        if thought is not None:
            text = text.lstrip("\n")  # the template's "</think>\n\n" is not the answer's
        cuts = [cut for cut in (text.find(stop) for stop in item.prompt.settings.stop)
                if cut != -1]
        if cuts:
            # OpenAI semantics: the earliest stop string ends the output and is not part of it.
            # Stop strings apply to the answer only, never to the reasoning.
            text, finish, counted = text[:min(cuts)], "stop", len(tokens)
        calls = None
        if item.prompt.calls_tools:
            text, calls = split_tool_calls(text)
            finish = "tool_calls" if calls else finish
        unclosed = (item.prompt.must_call and not calls) or (
            item.prompt.settings.json_schema is not None and not _parses(text))
        if unclosed:
            # The grammar kept it valid so far; only the output limit can leave it unclosed.
            return Completion(item.prompt.key, None, finish, len(item.ids), counted,
                              error=f"{JSON_INCOMPLETE}: the output limit ({item.limit} tokens) "
                                    "ended before the JSON closed; raise max_tokens",
                              reasoning=reasoning)
        return Completion(item.prompt.key, text, finish, len(item.ids), counted,
                          reasoning=reasoning,
                          reasoning_tokens=0 if thought is None else len(tokens) - len(answer),
                          tool_calls=calls)

    def split_reasoning(self, prompt: Sequence[int], output: Sequence[int]
                        ) -> tuple[list[int] | None, list[int]]:
        """(reasoning ids or None, answer ids). The block opens with the output's first token,
        or in the prompt (Qwen3 Thinking-2507 templates end it with `<think>`); an output that
        ends before `</think>` was cut off while thinking: all reasoning, no answer."""
        if self.think_ids is None:
            return None, list(output)
        open_id, close_id = self.think_ids
        opened_in_prompt = open_id in prompt and (
            close_id not in prompt or _last(prompt, open_id) > _last(prompt, close_id))
        if not (opened_in_prompt or (output and output[0] == open_id)):
            return None, list(output)
        body = list(output[1:] if output and output[0] == open_id else output)
        if close_id not in body:
            return body, []
        close = body.index(close_id)
        return body[:close], body[close + 1:]

    def answer_tail(self, prompt: Sequence[int], output: Sequence[int], tokens: int) -> str:
        """The last `tokens` tokens of the answer so far, as text ('' while thinking)."""
        _, answer = self.split_reasoning(prompt, output)
        return self._text(answer[-tokens:])

    def _text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def split_tool_calls(text: str) -> tuple[str, list[dict[str, str]] | None]:
    """Qwen's <tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks out of an answer:
    (the text around them, the calls with their arguments as JSON text, as OpenAI gives them).
    A block that is not such a call stays in the text, as the model wrote it."""
    calls: list[dict[str, str]] = []

    def take(match: re.Match[str]) -> str:
        try:
            call = json.loads(match.group(1))
        except ValueError:
            return match.group(0)
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)
                and isinstance(call.get("arguments", {}), dict)):
            return match.group(0)
        calls.append({"name": call["name"],
                      "arguments": json.dumps(call.get("arguments", {}), ensure_ascii=False)})
        return ""

    rest = _TOOL_CALL.sub(take, text)
    return (rest.strip(), calls) if calls else (text, None)


# The start of a failed line's error when its JSON was cut off: results give it its own code
# (batchq.formats.JSON_INCOMPLETE; the engine imports nothing of batchq's).
JSON_INCOMPLETE = "json_incomplete"


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _last(ids: Sequence[int], token: int) -> int:
    return len(ids) - 1 - list(reversed(ids)).index(token)
