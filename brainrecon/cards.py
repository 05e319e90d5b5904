"""Data and model cards: the Markdown files under ``data_cards/``.

Loaders attach their card's text as ``.description`` (as nilearn does), and
``brainrecon card NAME`` prints one.
"""
from __future__ import annotations

from pathlib import Path

from .errors import InvalidInputError

__all__ = ["card_dir", "list_cards", "read_card"]


def card_dir() -> Path:
    """The folder that holds the cards (``data_cards/`` beside the package)."""
    return Path(__file__).resolve().parent.parent / "data_cards"


def list_cards() -> list[str]:
    """Names of the available cards (file stems)."""
    return sorted(p.stem for p in card_dir().glob("*.md"))


def read_card(name: str) -> str:
    """Return the text of card ``name`` (``"nsd"``, ``"toyworld"``, ...).

    Raises
    ------
    InvalidInputError
        If no such card exists; the message lists the cards there are.
    """
    path = card_dir() / f"{Path(name).stem}.md"
    if not path.is_file():
        raise InvalidInputError(f"No data card named {name!r} in {card_dir()}; "
                                f"available: {', '.join(list_cards()) or 'none'}.")
    return path.read_text(encoding="utf-8")
