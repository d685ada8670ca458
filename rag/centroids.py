"""Per-language vector sums and the centroids made of them (for mean-centring, rag/retriever.py).

A collection's centroids are kept as running sums and counts per chunk language, stored with the
collection (rag/store.py, the collection's state record) and changed by every write and delete:
no process samples or rebuilds them, and every process and replica reads the same ones. Sums are
float64: thousands of additions and subtractions of float32 vectors stay exact to ~1e-12.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import numpy as np


class VectorSums:
    """Count and float64 sum of vectors per language (None: chunks without a language)."""

    __slots__ = ("_counts", "_sums")

    def __init__(
        self, counts: Mapping[str | None, int] | None = None, sums: Mapping[str | None, np.ndarray] | None = None
    ):
        self._counts: dict[str | None, int] = dict(counts or {})
        self._sums: dict[str | None, np.ndarray] = {k: np.asarray(v, dtype=np.float64) for k, v in (sums or {}).items()}

    @classmethod
    def of(cls, languages: Sequence[str | None], vectors: np.ndarray) -> VectorSums:
        out = cls()
        out.add(languages, vectors)
        return out

    def add(self, languages: Sequence[str | None], vectors: np.ndarray, *, sign: int = 1) -> None:
        if len(languages) != len(vectors):
            raise ValueError(f"got {len(languages)} languages for {len(vectors)} vectors")
        if not len(vectors):
            return
        vectors = np.asarray(vectors, dtype=np.float64)
        labels = np.array([lang or "" for lang in languages])
        for label in np.unique(labels):
            rows = labels == label
            self._merge(label or None, int(rows.sum()) * sign, vectors[rows].sum(axis=0) * sign)

    def __iadd__(self, other: VectorSums) -> VectorSums:
        for lang, n in other._counts.items():
            self._merge(lang, n, other._sums[lang])
        return self

    def __isub__(self, other: VectorSums) -> VectorSums:
        for lang, n in other._counts.items():
            self._merge(lang, -n, -other._sums[lang])
        return self

    def _merge(self, lang: str | None, n: int, total: np.ndarray) -> None:
        count = self._counts.get(lang, 0) + n
        if count <= 0:  # a language whose last chunk is gone: drop its (numerically ~0) sum
            self._counts.pop(lang, None)
            self._sums.pop(lang, None)
            return
        self._counts[lang] = count
        self._sums[lang] = self._sums[lang] + total if lang in self._sums else total.copy()

    @property
    def counts(self) -> dict[str | None, int]:
        return dict(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def __bool__(self) -> bool:
        return bool(self._counts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VectorSums):
            return NotImplemented
        return self._counts == other._counts and all(
            np.allclose(self._sums[k], other._sums[k], rtol=0, atol=1e-6) for k in self._counts
        )

    def centroids(self, *, prior: float) -> Centroids:
        return Centroids.of_sums(self._counts, self._sums, prior=prior)

    def to_json(self) -> dict[str, dict[str, object]]:
        """{language or "": {"n": count, "sum": base64 of float64 little-endian}}, for the store."""
        return {
            (lang or ""): {"n": n, "sum": base64.b64encode(self._sums[lang].astype("<f8").tobytes()).decode()}
            for lang, n in self._counts.items()
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, object]]) -> VectorSums:
        counts, sums = {}, {}
        for label, value in data.items():
            counts[label or None] = int(value["n"])  # type: ignore[arg-type]
            sums[label or None] = np.frombuffer(base64.b64decode(str(value["sum"])), dtype="<f8").copy()
        return cls(counts, sums)


class Centroids:
    """Per-language mean chunk vectors of a collection, shrunk toward the collection's mean:
    ``(n·mean_lang + prior·mean_all) / (n + prior)``, so a language with a handful of chunks is
    not centred on itself (which would zero its vectors)."""

    def __init__(self, means: dict[str | None, np.ndarray], overall: np.ndarray) -> None:
        self.means = means
        self.overall = overall
        # one matrix, the overall mean last (for languages without a centroid), built once: each
        # query centres ~100 candidates, and stacking their rows anew cost more than the centring
        self._row = {lang: i for i, lang in enumerate(means)}
        self._shifts = np.stack([*means.values(), overall]) if len(overall) else overall

    @classmethod
    def none(cls) -> Centroids:
        return cls({}, np.zeros(0, dtype=np.float32))

    @classmethod
    def of(cls, languages: Sequence[str | None], vectors: np.ndarray, *, prior: float) -> Centroids:
        return VectorSums.of(languages, vectors).centroids(prior=prior)

    @classmethod
    def of_sums(
        cls, counts: Mapping[str | None, int], sums: Mapping[str | None, np.ndarray], *, prior: float
    ) -> Centroids:
        total = sum(counts.values())
        if not total:
            return cls.none()
        overall = sum(sums.values()) / total
        means = {lang: ((sums[lang] + prior * overall) / (n + prior)).astype(np.float32) for lang, n in counts.items()}
        return cls(means, overall.astype(np.float32))

    def centre(self, vectors: np.ndarray, languages: Sequence[str | None]) -> np.ndarray:
        """Unit vectors with each row's language centroid subtracted."""
        if not len(self.overall) or not len(vectors):
            return vectors
        other = len(self._row)
        out = vectors - self._shifts[[self._row.get(lang, other) for lang in languages]]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
