"""The onnx and openvino embedding backends on the real local model: export once, reuse, stay
close to torch fp32, and rank multilingual answers as it does."""

from __future__ import annotations

import numpy as np
import pytest

from rag import embedding_backends
from rag.embedder import SentenceTransformerEmbedder
from rag.errors import ModelNotFoundError

pytestmark = [pytest.mark.model, pytest.mark.integration]

VARIANTS = [("onnx", "int8"), ("openvino", "int8")]

# A question in each language, its answer in another language, and unrelated text.
PAIRS = [
    ("en", "How many days of paid leave do employees get?", "Mitarbeiter erhalten 28 Tage bezahlten Urlaub im Jahr."),
    ("de", "Wann wurde der Eiffelturm gebaut?", "The Eiffel Tower was built between 1887 and 1889 in Paris."),
    ("ru", "Какая самая длинная река в Африке?", "النيل هو أطول نهر في أفريقيا."),
    ("ar", "ما هي عاصمة اليابان؟", "Tokyo is the capital of Japan and its largest city."),
    ("hi", "कंप्यूटर वायरस से कैसे बचें?", "Installez un antivirus et ne cliquez pas sur les pièces jointes inconnues."),
    ("th", "ฉันจะลาป่วยได้กี่วัน", "Сотрудники могут взять до 30 дней оплачиваемого больничного."),
    ("zh", "光合作用需要什么?", "Photosynthesis needs sunlight, water and carbon dioxide."),
    ("ja", "富士山の高さは?", "富士山海拔3776米，是日本最高的山。"),
]
UNRELATED = [
    "The recipe needs two eggs, flour and a cup of milk.",
    "Der Zug nach Hamburg fährt um 14 Uhr ab.",
    "Футбольный матч закончился вничью.",
    "小明喜欢在周末打篮球。",
]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def fp32(model_settings):
    e = SentenceTransformerEmbedder(model_settings.embedding.model_copy(update={"backend": "torch", "dtype": "float32"}))
    e.warm_up()
    return e


def runtime_config(model_settings, export_dir, backend, quantization):
    return model_settings.embedding.model_copy(
        update={"backend": backend, "quantization": quantization, "export_dir": export_dir, "dtype": "auto"}
    )


@pytest.fixture(scope="session")
def runtime_embedders(model_settings, export_dir):
    embedders = {}
    for backend, quantization in VARIANTS:
        embedding_backends.require(backend, quantization)  # the extras are part of the dev setup
        e = SentenceTransformerEmbedder(runtime_config(model_settings, export_dir, backend, quantization))
        e.warm_up()
        embedders[backend, quantization] = e
    return embedders


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v))
def test_exports_once_then_reuses_the_export(model_settings, export_dir, runtime_embedders, monkeypatch, variant):
    first = runtime_embedders[variant]
    assert first.backend == variant[0] and first.export.parent == export_dir

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(embedding_backends, "_build", no_second_export)
    again = SentenceTransformerEmbedder(runtime_config(model_settings, export_dir, *variant))
    again.warm_up()
    assert again.export == first.export
    texts = ["passage: Berlin ist die Hauptstadt Deutschlands."]
    np.testing.assert_allclose(again.embed_documents(texts), first.embed_documents(texts), atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v))
def test_vectors_stay_close_to_torch_fp32(fp32, runtime_embedders, variant):
    # bench/embed.py over 96 xquad paragraphs in 12 languages: onnx int8 cosine >= 0.994,
    # openvino int8 >= 0.9998 (bf16 torch: >= 0.998). 0.98 leaves room for CPUs without VNNI,
    # where onnx int8 quantizes to 7 bits, while a broken export (wrong inputs, no attention
    # mask) lands far below it.
    texts = [answer for _, _, answer in PAIRS] + UNRELATED
    got, want = runtime_embedders[variant].embed_documents(texts), fp32.embed_documents(texts)
    cosine = (got * want).sum(axis=1)
    assert cosine.min() > 0.98, cosine
    queries = [q for _, q, _ in PAIRS]
    assert ((runtime_embedders[variant].embed_queries(queries) * fp32.embed_queries(queries)).sum(axis=1) > 0.98).all()


# onnx int8 (dynamic: activations quantized too) does not hold this: with it the Chinese question
# ranks another passage first (seen on an AVX-512/AMX Xeon), which is why README does not
# recommend it; openvino int8 quantizes weights only and keeps every ranking.
@pytest.mark.parametrize("variant", [("openvino", "int8")], ids=lambda v: "-".join(v))
def test_answers_in_another_language_rank_first(fp32, runtime_embedders, variant):
    passages = [answer for _, _, answer in PAIRS] + UNRELATED
    for embedder in (fp32, runtime_embedders[variant]):
        scores = embedder.embed_queries([q for _, q, _ in PAIRS]) @ embedder.embed_documents(passages).T
        best = scores.argmax(axis=1)
        wrong = [PAIRS[i][0] for i, b in enumerate(best) if b != i]
        assert not wrong, f"{embedder.backend}: questions in {wrong} ranked another passage first"


def test_a_corrupt_export_gives_an_error_that_says_what_to_delete(model_settings, tmp_path, runtime_embedders):
    good = runtime_embedders["onnx", "int8"].export
    broken = tmp_path / "exports"
    target = broken / good.name
    target.mkdir(parents=True)
    for f in good.iterdir():
        data = f.read_bytes()
        (target / f.name).write_bytes(data if f.name == embedding_backends.MANIFEST else b"\0" * len(data))
    e = SentenceTransformerEmbedder(runtime_config(model_settings, broken, "onnx", "int8"))
    with pytest.raises(ModelNotFoundError, match=f"does not load.*delete {target}"):
        e.warm_up()
