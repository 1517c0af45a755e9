"""Prompt templates: how a record's question (and choices) becomes the user text of a chat turn.

Templates are data, keyed by name; a task names its template, and ``MODEL_OVERRIDES`` replaces a
template for one architecture (keyed by adapter name), as lmms-eval's per-model prompt kwargs do.
The result always goes through the model's own chat template afterwards.

A :class:`Prompter` is a template resolved for one model. It is saved with every store (its
``meta["prompt"]``) and hence with every classifier fitted on one, so extraction, prediction and
the benchmarks ask a question the same way, context included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from superneurons.errors import ConfigError

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class PromptTemplate:
    """``binary`` formats yes/no questions; ``choice`` multiple-choice ones."""

    binary: str = "{question}"
    choice: str = (
        "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
    )
    context: str = "Context: {context}\n"


TEMPLATES: dict[str, PromptTemplate] = {
    # The embedded default model was trained on the bare question.
    "plain": PromptTemplate(),
    # LLaVA-1.5's evaluation conventions.
    "llava": PromptTemplate(
        binary="{question}\nAnswer the question using a single word or phrase."
    ),
}

# (architecture, template) -> the template that architecture is evaluated with instead.
MODEL_OVERRIDES: dict[tuple[str, str], PromptTemplate] = {
    # Qwen3-VL's own evaluation prompt for yes/no benchmarks.
    ("qwen3_vl", "llava"): PromptTemplate(binary="{question}\nPlease answer yes or no."),
}

# Multiple choice → binary: one yes/no question per choice (DESIGN §5).
CHOICE_AS_BINARY = '{question} Is the answer "{choice}"?'


def binary_choice_question(question: str, choice: str) -> str:
    """The yes/no question asking whether ``choice`` answers ``question``."""
    return CHOICE_AS_BINARY.format(question=question, choice=choice)


def template_for(name: str, architecture: str | None = None) -> PromptTemplate:
    """The template ``name``, or its override for ``architecture`` when one is declared."""
    if name not in TEMPLATES:
        raise ConfigError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}")
    return MODEL_OVERRIDES.get((architecture, name), TEMPLATES[name])


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
    def for_model(cls, name: str, architecture: str | None = None) -> Prompter:
        """The template ``name`` (or its override for ``architecture``)."""
        return cls(template_for(name, architecture))

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
