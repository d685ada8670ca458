"""Language identification: one protocol, lingua behind it."""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from rag.config import LanguageConfig
from rag.errors import ConfigError


@runtime_checkable
class LanguageIdentifier(Protocol):
    def detect(self, text: str) -> str | None:
        """ISO 639-1 code of ``text``'s language, or None when it has no identifiable language."""
        ...


class LinguaIdentifier:
    """lingua-language-detector; reliable on short, mixed text. Models load on first use."""

    def __init__(self, config: LanguageConfig | None = None) -> None:
        self.config = config or LanguageConfig()
        self._detector = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        with self._lock:
            if self._detector is not None:
                return
            from lingua import IsoCode639_1, LanguageDetectorBuilder

            if self.config.languages is None:
                builder = LanguageDetectorBuilder.from_all_languages()
            else:
                codes = []
                for code in self.config.languages:
                    try:
                        codes.append(getattr(IsoCode639_1, code.upper()))
                    except AttributeError:
                        raise ConfigError(
                            f"language.languages: {code!r} is not an ISO 639-1 code lingua knows; "
                            "use two-letter codes such as 'de' or 'zh'"
                        ) from None
                if len(codes) < 2:
                    raise ConfigError("language.languages needs at least two languages, or null for all")
                builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
            if self.config.low_accuracy:
                builder = builder.with_low_accuracy_mode()
            self._detector = builder.build()

    def detect(self, text: str) -> str | None:
        if not any(ch.isalpha() for ch in text):
            return None
        self.warm_up()
        assert self._detector is not None
        language = self._detector.detect_language_of(text)
        return None if language is None else language.iso_code_639_1.name.lower()
