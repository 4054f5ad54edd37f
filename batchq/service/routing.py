"""Which variant runs each line: the model the line names (`model` on plain lines, `body.model`
on OpenAI lines), resolved like `--model`; else the job's `--model`. With `--model-override`,
every line goes to `--model` (how files written for another provider are run). A line naming
a model that nothing resolves is refused with the hint, never silently re-routed."""

from __future__ import annotations

from batchq.config import Settings
from batchq.errors import NotFound
from batchq.formats import LineError, Request
from batchq.variants import Variant, resolve

# What a line naming an unknown model is told to do, by where the file came from.
SUBMIT_HINT = ("name a catalogue alias, a Hugging Face id or a model directory, or submit "
               "with --model-override to run every line on --model")
API_HINT = ("name a catalogue alias, a Hugging Face id or a model directory on the workers' "
            "hosts, or a name BATCHQ_MODEL_ALIASES maps")


class ModelRouter:
    """Called on each checked line; returns the index of its variant in `variants` (the
    job's own `--model` is index 0). Each distinct model name is resolved once.

    Without a default (an HTTP batch), every line must name its model, and the first line's
    becomes index 0: the job's own."""

    def __init__(self, default: Variant | None, settings: Settings, override: bool = False,
                 hint: str = SUBMIT_HINT):
        self.variants = [] if default is None else [default]
        self.required = default is None  # every line names its model
        self.override = override
        self.aliases = settings.model_aliases
        self.hint = hint
        self._by_name: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        """The model names the lines used, as they spelt them, in the order first seen."""
        return list(self._by_name)

    def __call__(self, request: Request) -> int:
        field = "body.model" if request.kind.openai else "model"
        if request.model is None and self.required:
            raise LineError(f"field '{field}' is missing", "missing_required_parameter", field)
        if self.override or request.model is None:
            return 0
        if request.model not in self._by_name:
            self._by_name[request.model] = self.index_of(self._resolve(request.model, field))
        return self._by_name[request.model]

    def _resolve(self, model: str, field: str) -> Variant:
        try:
            return resolve(model, None, self.aliases)
        except NotFound as exc:
            raise LineError(f"field '{field}': {exc}; {self.hint}", "model_not_found",
                            field) from None

    def index_of(self, variant: Variant) -> int:
        """The variant's index, added to `variants` if it is new."""
        if variant not in self.variants:
            self.variants.append(variant)
        return self.variants.index(variant)
