"""Static int8 (weights and activations, NNCF post-training quantization) of the embedding model
on OpenVINO, against torch fp32 and OpenVINO fp32 in one run: passages/s and cosine to torch
fp32. An experiment for CPUs without native bf16 (issue 13's ≥ 2× encoder goal); not a backend
BabelRAG ships (README, "Embedding backends", says why).

    python bench/embed_static_int8.py [--variant all|no-scores|ffn|no-down] [--calibration dev|handbook] [--n 96]

Variants: ``all`` quantizes every MatMul; ``no-scores`` keeps the attention-score products
(QK^T and the weighted sum of V, activation by activation) in f32; ``ffn`` quantizes only the
feed-forward layers; ``no-down`` all but the feed-forward down-projection. Calibration texts:
xquad dev questions, six to a text (the dev split: tuning data), or the example handbook's
paragraphs (8 languages). Measured on xquad corpus paragraphs (12 languages interleaved, batch
32, "passage: " prompt), f32 inference precision (as on a CPU without bf16); the ratio is the
median of per-round ratios within the run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, XQUAD, read_jsonl

from rag import load_settings
from rag.embedder import SentenceTransformerEmbedder
from rag.embedding_backends import _OpenVINOModel

IGNORED = {
    "all": [],
    "no-scores": [r".*attention/self/MatMul.*"],
    "ffn": [r".*attention.*", r".*pooler.*"],
    "no-down": [r".*layer\.\d+/output/dense.*"],
}


def calibration_texts(kind: str) -> list[str]:
    if kind == "dev":
        questions = [q["question"] for q in read_jsonl(XQUAD / "queries_dev.jsonl")]
        return [" ".join(questions[i : i + 6]) for i in range(0, 1800, 6)]
    texts = []
    for path in sorted((ROOT / "examples" / "handbook").glob("*.md")):
        paragraphs = [p.strip() for p in path.read_text("utf-8").split("\n\n") if p.strip()]
        texts += paragraphs + [" ".join(paragraphs[i : i + 3]) for i in range(0, len(paragraphs), 3)]
    return texts


def main() -> None:
    import nncf
    import openvino as ov

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=list(IGNORED), default="no-scores")
    parser.add_argument("--calibration", choices=["dev", "handbook"], default="dev")
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    settings = load_settings()
    torch_fp32 = SentenceTransformerEmbedder(
        settings.embedding.model_copy(update={"backend": "torch", "dtype": "float32"})
    )
    ov_fp32 = SentenceTransformerEmbedder(
        settings.embedding.model_copy(update={"backend": "openvino", "dtype": "float32"})
    )
    int8 = SentenceTransformerEmbedder(
        settings.embedding.model_copy(update={"backend": "openvino", "dtype": "float32"})
    )
    by_lang: dict[str, list[str]] = {}
    for row in read_jsonl(XQUAD / "corpus.jsonl"):
        by_lang.setdefault(row["lang"], []).append(row["text"])
    texts = [t for group in zip(*by_lang.values()) for t in group][: args.n]
    for e in (torch_fp32, ov_fp32, int8):
        e.embed_documents(texts[:4])  # load (and export the fp32 model if needed)

    transformer = ov_fp32._model[0]
    names = list(transformer.tokenizer.model_input_names)
    folder = next(
        Path(settings.embedding.export_dir).expanduser().glob(f"{Path(str(torch_fp32.model_id)).name}-openvino-fp32-*")
    )
    calibration = calibration_texts(args.calibration)[:300]
    items = []
    for text in calibration:
        features = transformer.tokenizer(["passage: " + text], truncation=True, max_length=512, return_tensors="np")
        items.append({name: features[name] for name in names})
    started = time.perf_counter()
    quantized = nncf.quantize(
        ov.Core().read_model(folder / "openvino_model.xml"),
        nncf.Dataset(items),
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(items),
        ignored_scope=nncf.IgnoredScope(patterns=IGNORED[args.variant], validate=False),
    )
    quantize_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(quantized, Path(tmp) / "openvino_model.xml", compress_to_fp16=False)
        int8._model[0].model = _OpenVINOModel(Path(tmp) / "openvino_model.xml", transformer.model.config, names, "f32")
        int8.embed_documents(texts[:4])
        rates: dict[str, list[float]] = {
            "torch fp32": [],
            "openvino fp32": [],
            f"openvino static int8 ({args.variant})": [],
        }
        vectors: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            for name, embedder in zip(rates, (torch_fp32, ov_fp32, int8), strict=True):
                started = time.perf_counter()
                vectors[name] = embedder.embed_documents(texts)
                rates[name].append(len(texts) / (time.perf_counter() - started))
    print(
        f"{len(calibration)} calibration texts ({args.calibration}), quantized in {quantize_s:.0f} s; {len(texts)} passages"
    )
    base = np.array(rates["torch fp32"])
    for name, rate in rates.items():
        a, b = vectors[name], vectors["torch fp32"]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        print(f"{name:<36} {statistics.median(rate):6.1f} passages/s  {np.median(np.array(rate) / base):5.2f}x  "
              f"cosine mean {cos.mean():.5f} min {cos.min():.5f}")  # fmt: skip


if __name__ == "__main__":
    main()
