"""Which variant runs each line: the model the line names (`model` on plain lines, `body.model`
on OpenAI lines), resolved like `--model`; else the job's `--model`. With `--model-override`,
every line goes to `--model` (how files written for another provider are run). A line naming
a model that nothing resolves is refused with the hint, never silently re-routed."""

from __future__ import annotations

from batchq.config import Settings
from batchq.errors import NotFound
from batchq.formats import LineError, Request
from batchq.variants import Variant, resolve


class ModelRouter:
    """Called on each checked line; returns the index of its variant in `variants` (the
    job's own `--model` is index 0). Each distinct model name is resolved once."""

    def __init__(self, default: Variant, settings: Settings, override: bool = False):
        self.variants = [default]
        self.override = override
        self.aliases = settings.model_aliases
        self._by_name: dict[str, int] = {}

    def __call__(self, request: Request) -> int:
        if self.override or request.model is None:
            return 0
        if request.model not in self._by_name:
            self._by_name[request.model] = self.index_of(self._resolve(request))
        return self._by_name[request.model]

    def _resolve(self, request: Request) -> Variant:
        assert request.model is not None
        field = "body.model" if request.kind.openai else "model"
        try:
            return resolve(request.model, None, self.aliases)
        except NotFound as exc:
            raise LineError(f"field '{field}': {exc}; name a catalogue alias, a Hugging Face id "
                            "or a model directory, or submit with --model-override to run every "
                            "line on --model", "model_not_found", field) from None

    def index_of(self, variant: Variant) -> int:
        """The variant's index, added to `variants` if it is new."""
        if variant not in self.variants:
            self.variants.append(variant)
        return self.variants.index(variant)
