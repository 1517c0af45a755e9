"""Prompt templates: how a record's question (and choices) becomes the user text of a chat turn.

Templates are data: the built-in ones are in ``templates.yaml`` beside this module, and a user's
file in the same format adds more (:func:`load_templates`, ``run --template-file``). A template
may override its fields for one architecture (keyed by adapter name), as lmms-eval's per-model
prompt kwargs do. The result always goes through the model's own chat template afterwards.

A :class:`Prompter` is a template resolved for one model. It is saved with every store (its
``meta["prompt"]``) and hence with every classifier fitted on one, so extraction, prediction and
the benchmarks ask a question the same way, context included.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from superneurons.errors import ConfigError, DataError

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class PromptTemplate:
    """``binary`` formats yes/no questions; ``choice`` multiple-choice ones."""

    binary: str = "{question}"
    choice: str = (
        "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
    )
    context: str = "Context: {context}\n"


# The placeholders each field must hold (and the only ones it may hold).
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "binary": ("question",),
    "choice": ("question", "options"),
    "context": ("context",),
}
OVERRIDES = "overrides"


@dataclass(frozen=True)
class TemplateSpec:
    """A named template and its per-architecture variants (``overrides``: adapter name ->
    the template that architecture is asked with instead)."""

    name: str
    template: PromptTemplate = PromptTemplate()
    overrides: Mapping[str, PromptTemplate] = field(default_factory=dict)

    def resolve(self, architecture: str | None = None) -> PromptTemplate:
        """The template ``architecture`` is asked with."""
        return self.overrides.get(architecture, self.template)

    def to_yaml_data(self) -> dict:
        """This template as a mapping of the file format: only the fields that differ."""
        data = _changed(PromptTemplate(), self.template)
        if self.overrides:
            data[OVERRIDES] = {
                arch: _changed(self.template, tpl) for arch, tpl in self.overrides.items()
            }
        return data


def _changed(base: PromptTemplate, template: PromptTemplate) -> dict[str, str]:
    return {k: v for k, v in asdict(template).items() if v != getattr(base, k)}


def parse_templates(
    data: object, where: str, architectures: Collection[str] | None = None
) -> dict[str, TemplateSpec]:
    """Templates from the file format's mapping, every field checked; problems name ``where``
    (the file) and the key. Override keys must be among ``architectures`` when given."""
    if not isinstance(data, Mapping) or not data:
        raise DataError(f"{where}: expected a mapping of template names to their fields")
    specs = {}
    for name, body in data.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: template names must be non-empty strings, got {name!r}")
        body = {} if body is None else body
        if not isinstance(body, Mapping):
            raise DataError(f"{where}: template {name!r}: expected a mapping of fields")
        overrides = body.get(OVERRIDES) or {}
        if not isinstance(overrides, Mapping):
            raise DataError(f"{where}: {name}.{OVERRIDES}: expected architecture -> fields")
        template = _template(body, PromptTemplate(), f"{where}: {name}", allow_overrides=True)
        variants = {}
        for arch, changes in overrides.items():
            if architectures is not None and arch not in architectures:
                raise DataError(
                    f"{where}: {name}.{OVERRIDES}: unknown architecture {arch!r}; known: "
                    f"{sorted(architectures)}"
                )
            if not isinstance(changes, Mapping):
                raise DataError(f"{where}: {name}.{OVERRIDES}.{arch}: expected a mapping")
            variants[str(arch)] = _template(changes, template, f"{where}: {name}.{arch}")
        specs[name] = TemplateSpec(name, template, variants)
    return specs


def _template(
    body: Mapping, base: PromptTemplate, where: str, allow_overrides: bool = False
) -> PromptTemplate:
    known = [*PLACEHOLDERS, *([OVERRIDES] if allow_overrides else [])]
    unknown = [k for k in body if k not in known]
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown}; known: {known}")
    values = {}
    for key, allowed in PLACEHOLDERS.items():
        if key not in body:
            continue
        value = body[key]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}.{key}: expected a non-empty string, got {value!r}")
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as error:
            raise DataError(
                f"{where}.{key}: {error} (write a literal brace as {{{{ or }}}})"
            ) from None
        extra, missing = sorted(used - set(allowed)), [p for p in allowed if p not in used]
        if extra or missing:
            wanted = ", ".join("{" + p + "}" for p in allowed)
            raise DataError(
                f"{where}.{key}: must hold {wanted} and nothing else; "
                + (f"unknown {['{' + p + '}' for p in extra]}" if extra else f"missing {missing}")
            )
        values[key] = value
    return replace(base, **values)


def load_templates(
    path: str | Path, architectures: Collection[str] | None = None
) -> dict[str, TemplateSpec]:
    """The templates of a YAML file in the format of the built-in ``templates.yaml``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such template file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise DataError(f"{path}{line}: not valid YAML ({problem})") from None
    return parse_templates(data, str(path), architectures)


def dump_templates(specs: Mapping[str, TemplateSpec]) -> str:
    """``specs`` as the text of a template file (``load_templates`` reads it back equal)."""
    data = {name: spec.to_yaml_data() for name, spec in specs.items()}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


TEMPLATES: dict[str, TemplateSpec] = load_templates(Path(__file__).with_name("templates.yaml"))


def template_spec(name: str, library: Mapping[str, TemplateSpec] = TEMPLATES) -> TemplateSpec:
    """The template ``name`` of ``library`` (the built-ins by default)."""
    if name not in library:
        raise ConfigError(f"unknown prompt template {name!r}; known: {sorted(library)}")
    return library[name]


def template_for(
    name: str, architecture: str | None = None, library: Mapping[str, TemplateSpec] = TEMPLATES
) -> PromptTemplate:
    """The template ``name``, or its override for ``architecture`` when one is declared."""
    return template_spec(name, library).resolve(architecture)


# Multiple choice → binary: one yes/no question per choice (DESIGN §5).
CHOICE_AS_BINARY = '{question} Is the answer "{choice}"?'


def binary_choice_question(question: str, choice: str) -> str:
    """The yes/no question asking whether ``choice`` answers ``question``."""
    return CHOICE_AS_BINARY.format(question=question, choice=choice)


def format_prompt(
    question: str,
    choices: list[str] | None = None,
    template: str | PromptTemplate = "plain",
    context: str | None = None,
) -> str:
    """The user text for one question: options listed as "A. …" lines for multiple choice."""
    tpl = template_for(template) if isinstance(template, str) else template
    if choices:
        options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
        text = tpl.choice.format(question=question, options=options)
    else:
        text = tpl.binary.format(question=question)
    return (tpl.context.format(context=context) if context else "") + text


@dataclass(frozen=True)
class Prompter:
    """A template resolved for one architecture: turns a question into the model's chat prompt."""

    template: PromptTemplate = PromptTemplate()

    @classmethod
    def for_model(cls, template: str | TemplateSpec, architecture: str | None = None) -> Prompter:
        """The template (a built-in's name, or a spec) as ``architecture`` is asked with it."""
        spec = template if isinstance(template, TemplateSpec) else template_spec(template)
        return cls(spec.resolve(architecture))

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Prompter:
        """The prompter saved by ``to_json`` (a store's ``meta["prompt"]``)."""
        return cls(PromptTemplate(**data))

    def to_json(self) -> dict[str, str]:
        return asdict(self.template)

    def text(
        self, question: str, choices: list[str] | None = None, context: str | None = None
    ) -> str:
        """The user text: context, question and (multiple choice) the listed options."""
        return format_prompt(question, choices, self.template, context)

    def chat(
        self,
        processor,
        question: str,
        choices: list[str] | None = None,
        context: str | None = None,
    ) -> str:
        """The user text through the processor's chat template, ready to generate."""
        return chat_prompt(processor, self.text(question, choices, context))


def chat_messages(text: str) -> list[dict]:
    """One user turn holding an image and ``text``, in the processor's chat format."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def chat_prompt(processor, text: str) -> str:
    """``text`` (with the image) through the processor's chat template, ready to generate."""
    return processor.apply_chat_template(chat_messages(text), add_generation_prompt=True)
