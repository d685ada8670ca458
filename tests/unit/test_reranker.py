import pytest

from rag.config import RerankerConfig
from rag.errors import ModelNotFoundError
from rag.reranker import CrossEncoderReranker, LLMListwiseReranker, NoReranker, parse_permutation
from tests.helpers import hit


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("[2] > [1] > [3]", 3, [1, 0, 2]),
        ("[3] > [1]", 3, [2, 0, 1]),  # left-out items follow in first-stage order
        ("[2] > [2] > [9] > [0] > [1]", 3, [1, 0, 2]),  # repeats and out-of-range ignored
        ("The ranking is: 3, 1, 2.", 3, [2, 0, 1]),
        ("Ранжирование: [2] > [3] > [1]", 3, [1, 2, 0]),
        ("no idea", 3, None),
        ("[0] > [7]", 3, None),
        ("", 2, None),
    ],
)
def test_parse_permutation(text, n, expected):
    assert parse_permutation(text, n) == expected


class ScriptedLLM:
    """Answers the listwise prompt with a fixed string: provokes the parsing paths."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.prompts = []

    def chat(self, messages, *, max_tokens=None):
        self.prompts.append(messages)
        return self.answer


HITS = [hit("Berlin ist die Hauptstadt.", 0.9, index=0), hit("東京は首都です。", 0.8, index=1), hit("Paris", 0.7, index=2)]


def test_listwise_reorders_by_the_llm_permutation():
    llm = ScriptedLLM("[3] > [1] > [2]")
    out = LLMListwiseReranker(llm).rerank("Hauptstadt von Frankreich?", HITS)
    assert [h.chunk.index for h in out] == [2, 0, 1]
    prompt = llm.prompts[0][-1]["content"]
    assert "[2] 東京は首都です。" in prompt and "Hauptstadt von Frankreich?" in prompt


def test_listwise_falls_back_to_first_stage_order_on_garbage():
    out = LLMListwiseReranker(ScriptedLLM("I cannot rank these.")).rerank("q", HITS)
    assert out == HITS


def test_listwise_never_drops_or_invents():
    out = LLMListwiseReranker(ScriptedLLM("[2] > [5] > [2]")).rerank("q", HITS)
    assert sorted(h.chunk.index for h in out) == [0, 1, 2]


def test_no_reranker_keeps_order():
    assert NoReranker().rerank("q", HITS) == HITS


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A randomly initialised 1-layer BERT cross-encoder saved to disk: real loading code,
    meaningless scores (no multilingual cross-encoder weights can be had here)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-ce")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "berlin", "paris", "ist", "die", "hauptstadt"]
    (path / "vocab.txt").write_text("\n".join(words + list("abcdefghijklmnopqrstuvwxyz")) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=1)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cross_encoder_sorts_by_its_scores(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    query = "Hauptstadt?"
    reranker = CrossEncoderReranker(RerankerConfig(kind="cross-encoder", model=str(tiny_cross_encoder), max_length=32))
    out = reranker.rerank(query, HITS)
    assert sorted(h.chunk.id for h in out) == sorted(h.chunk.id for h in HITS)
    scores = [h.score for h in out]
    assert scores == sorted(scores, reverse=True)
    direct = CrossEncoder(str(tiny_cross_encoder)).predict([(query, h.chunk.text) for h in HITS])
    by_id = {h.chunk.id: h.score for h in out}
    assert [by_id[h.chunk.id] for h in HITS] == pytest.approx([float(s) for s in direct], rel=1e-4)
    assert [h.retrieval_score for h in out] != [h.score for h in out]  # first-stage score kept apart


def test_cross_encoder_missing_model_names_the_setting(tmp_path):
    reranker = CrossEncoderReranker(RerankerConfig(kind="cross-encoder", model=str(tmp_path / "nope")))
    with pytest.raises(ModelNotFoundError, match="BABELRAG_RERANKER_MODEL"):
        reranker.rerank("q", HITS)
