"""What the report will be: its sections and the chat request that writes each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DISCLAIMER = (
    "Research support only, not financial advice: verify every figure and make your own decisions."
)
SECTION_TITLES = (
    "Overview",
    "Market structure and participants",
    "Key drivers and indicators",
    "Risks and scenarios",
    "Data sources and methods",
    "Open questions",
    "Timeline of notable events",
    "Glossary",
)
MAX_SECTIONS = len(SECTION_TITLES)
DEFAULT_MAX_TOKENS = 300


@dataclass(frozen=True)
class Section:
    index: int
    title: str
    prompt: str


@dataclass(frozen=True)
class Plan:
    topic: str
    model: str
    sections: tuple[Section, ...]
    max_tokens: int

    def request(self, section: Section) -> dict[str, Any]:
        """The chat completion body that writes one section."""
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [
                {
                    "role": "system",
                    "content": "You write concise, sourced trading research notes. "
                    "You never give financial advice or recommendations to buy or sell.",
                },
                {"role": "user", "content": section.prompt},
            ],
        }

    def preview_request(self) -> dict[str, Any]:
        """The largest section request: its worst case sizes the run."""
        return self.request(max(self.sections, key=lambda s: len(s.prompt)))

    def as_json(self) -> dict[str, Any]:
        """The plan as data (what the web console fetches), so the console and the CLI
        send the very same requests: each section's chat body, and the preview body."""
        return {
            "object": "research.plan",
            "topic": self.topic,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "max_sections": MAX_SECTIONS,
            "disclaimer": DISCLAIMER,
            "sections": [
                {
                    "index": s.index,
                    "title": s.title,
                    "prompt": s.prompt,
                    "request": self.request(s),
                }
                for s in self.sections
            ],
            "preview_request": self.preview_request(),
        }


def plan_report(
    topic: str, model: str = "demo-chat", sections: int = 4, max_tokens: int = DEFAULT_MAX_TOKENS
) -> Plan:
    topic = " ".join(topic.split())
    if not topic:
        raise ValueError('The topic is empty: say what to research, e.g. "EUR/USD carry".')
    if not 1 <= sections <= MAX_SECTIONS:
        raise ValueError(f"A report has 1 to {MAX_SECTIONS} sections; got {sections}.")
    if max_tokens < 1:
        raise ValueError("max_tokens is at least 1.")
    planned = tuple(
        Section(
            i + 1,
            title,
            f'Topic: {topic}\nWrite the section "{title}" of a research report on this '
            "topic, in at most a few short paragraphs.",
        )
        for i, title in enumerate(SECTION_TITLES[:sections])
    )
    return Plan(topic, model, planned, max_tokens)
