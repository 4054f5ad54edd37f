"""Prompt templates: Jinja2 in a sandbox (a template cannot reach Python's internals), strict
about undefined names, checked when the schedule is added so a mistake shows its line then,
not at 02:00."""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from batchq.errors import ConfigError

# What every template can use besides the schedule's own variables (--var NAME=VALUE).
VARIABLES = ("document", "filename", "path", "part", "parts")
SAMPLE = {"document": "A sample document.\n\nIts second paragraph.", "filename": "sample.txt",
          "path": "notes/sample.txt", "part": 1, "parts": 1}


class PromptTemplate:
    def __init__(self, source: str, name: str, variables: dict[str, str] | None = None):
        self.name = name
        self.variables = dict(variables or {})
        clash = set(self.variables) & set(VARIABLES)
        if clash:
            raise ConfigError(f"--var {sorted(clash)[0]}: that name is the template's own "
                              f"(it has {', '.join(VARIABLES)})")
        if "{{" not in source and "{%" not in source:
            source = source.rstrip() + "\n\n{{ document }}"  # a plain instruction, then the text
        self.source = source
        env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True,
                                   autoescape=False)
        try:
            self.template = env.from_string(source)
        except TemplateSyntaxError as exc:
            raise ConfigError(f"{name}:{exc.lineno}: {exc.message}") from None
        self.render(**SAMPLE)  # undefined names and runtime errors show now, with their line

    def render(self, **document: Any) -> str:
        try:
            return str(self.template.render(**self.variables, **document))
        except Exception as exc:  # Jinja2's own errors, and whatever an expression raises
            line = _line_of(exc)
            where = f"{self.name}:{line}" if line else self.name
            message = exc.message if isinstance(exc, TemplateError) else None
            raise ConfigError(f"{where}: {message or f'{type(exc).__name__}: {exc}'}") from None


def _line_of(exc: BaseException) -> int | None:
    """The template's line a runtime error happened on (Jinja2 puts it in the traceback)."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
