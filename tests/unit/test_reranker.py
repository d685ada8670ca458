import logging
import random
import re

import pytest

from rag.config import RerankerConfig
from rag.errors import ModelNotFoundError
from rag.reranker import CrossEncoderReranker, LLMListwiseReranker, NoReranker, parse_permutation, window_starts
from tests.helpers import hit


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("[2] > [1] > [3]", 3, [1, 0, 2]),
        ("[3] > [1]", 3, [2, 0, 1]),  # left-out items follow in their previous order
        ("[2] > [2] > [9] > [0] > [1]", 3, [1, 0, 2]),  # repeats and out-of-range ignored
        ("The ranking is: 3, 1, 2.", 3, [2, 0, 1]),  # bare numbers when there are no brackets
        ("2 > 3", 3, [1, 2, 0]),
        ("Ранжирование: [2] > [3] > [1]", 3, [1, 2, 0]),
        ("排名：[3] > [2] > [1]。", 3, [2, 1, 0]),
        ("Here are the 3 passages ranked: [2] > [1] > [3]", 3, [1, 0, 2]),  # the "3" in the text is no item
        ("1. [3]\n2. [1]\n3. [2]", 3, [2, 0, 1]),  # a numbered list of bracketed items
        ("[3] > [1] > [", 4, [2, 0, 1, 3]),  # truncated by max_tokens
        ("[ 2 ]>[1]", 2, [1, 0]),
        ("[10] > [2]", 10, [9, 1, 0, 2, 3, 4, 5, 6, 7, 8]),
        ("no idea", 3, None),
        ("[0] > [7]", 3, None),
        ("", 2, None),
        ("  \n ", 2, None),
    ],
)
def test_parse_permutation(text, n, expected):
    assert parse_permutation(text, n) == expected


@pytest.mark.parametrize(
    "n, window, stride, expected",
    [
        (7, 4, 2, [3, 1, 0]),
        (6, 4, 2, [2, 0]),
        (20, 10, 5, [10, 5, 0]),
        (3, 4, 2, [0]),
        (4, 4, 1, [0]),
        (5, 4, 3, [1, 0]),
    ],
)
def test_window_starts_move_bottom_up_and_end_at_zero(n, window, stride, expected):
    assert window_starts(n, window, stride) == expected


class ScriptedLLM:
    """Answers the listwise prompt with a fixed string: provokes the parsing paths."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.prompts = []

    def chat(self, messages, *, max_tokens=None):
        self.prompts.append(messages)
        return self.answer


class RelevanceLLM:
    """Ranks the passages of each prompt by a hidden relevance written in their text ("rel=7")
    and records which passages each window showed."""

    def __init__(self) -> None:
        self.windows: list[list[str]] = []

    def chat(self, messages, *, max_tokens=None):
        passages = re.findall(r"^\[(\d+)\] (.*)$", messages[-1]["content"], flags=re.MULTILINE)
        self.windows.append([text for _, text in passages])
        best_first = sorted(passages, key=lambda p: -int(re.search(r"rel=(\d+)", p[1]).group(1)))
        return " > ".join(f"[{number}]" for number, _ in best_first)


class DownLLM:
    def __init__(self) -> None:
        self.calls = 0

    def chat(self, messages, *, max_tokens=None):
        self.calls += 1
        raise ConnectionError("connection refused by http://127.0.0.1:8011/v1")


def listwise(client, **config) -> LLMListwiseReranker:
    return LLMListwiseReranker(client, RerankerConfig(kind="llm-listwise", **config))


HITS = [
    hit("Berlin ist die Hauptstadt.", 0.9, index=0),
    hit("東京は首都です。", 0.8, index=1),
    hit("Paris", 0.7, index=2),
]
# The truly relevant passage comes last from the first stage.
RELEVANCE = [5, 4, 3, 2, 1, 0, 9]
SEVEN = [hit(f"passage p{i} rel={r}", 1 - i / 10, index=i) for i, r in enumerate(RELEVANCE)]


def indices(hits):
    return [h.chunk.index for h in hits]


def test_listwise_reorders_by_the_llm_permutation():
    llm = ScriptedLLM("[3] > [1] > [2]")
    out = listwise(llm).rerank("Hauptstadt von Frankreich?", HITS)
    assert indices(out) == [2, 0, 1]
    prompt = llm.prompts[0][-1]["content"]
    assert "[2] 東京は首都です。" in prompt and "Hauptstadt von Frankreich?" in prompt


def test_listwise_sliding_window_lifts_the_bottom_passage_to_the_top():
    llm = RelevanceLLM()
    reranker = listwise(llm, window=4, stride=2, top_n=20)
    out = reranker.rerank("q", SEVEN)
    shown = [[int(re.search(r"p(\d)", text).group(1)) for text in window] for window in llm.windows]
    assert shown == [[3, 4, 5, 6], [1, 2, 6, 3], [0, 6, 1, 2]]  # bottom window first, each in the current order
    assert indices(out) == [6, 0, 1, 2, 3, 4, 5]
    assert [h.score for h in out] == [1 / (rank + 1) for rank in range(7)]
    assert [h.retrieval_score for h in out] == [SEVEN[i].retrieval_score for i in indices(out)]
    assert (reranker.windows, reranker.failures) == (3, 0)


def test_listwise_reorders_only_the_top_n():
    llm = RelevanceLLM()
    out = listwise(llm, window=4, stride=2, top_n=4).rerank("q", SEVEN)
    assert len(llm.windows) == 1
    assert indices(out) == [0, 1, 2, 3, 4, 5, 6]  # p6 is relevant but beyond top_n
    assert out[4:] == SEVEN[4:]  # the tail keeps first-stage order and scores


def test_listwise_keeps_a_window_the_llm_does_not_rank():
    llm = ScriptedLLM("I cannot rank these.")
    reranker = listwise(llm)
    out = reranker.rerank("q", HITS)
    assert indices(out) == [0, 1, 2]
    assert (reranker.windows, reranker.failures) == (1, 1)


def test_listwise_never_drops_or_invents():
    out = listwise(ScriptedLLM("[2] > [5] > [2]")).rerank("q", HITS)
    assert indices(out) == [1, 0, 2]


def test_listwise_keeps_order_when_the_llm_server_is_down(caplog):
    llm = DownLLM()
    reranker = listwise(llm, window=4, stride=2)
    with caplog.at_level(logging.WARNING, logger="rag.reranker"):
        out = reranker.rerank("q", SEVEN)
    assert indices(out) == list(range(7))
    assert llm.calls == 1  # the other windows would wait for the same server
    assert (reranker.windows, reranker.failures) == (3, 3)
    assert "connection refused by http://127.0.0.1:8011/v1" in caplog.text


def test_listwise_output_is_a_permutation_whatever_the_llm_answers():
    rng = random.Random(0)
    pieces = ["[", "]", " > ", ">", " ", "\n", "0", "1", "2", "3", "7", "12", "-1", "[1]", "[4]", "[99]", "passage",
              "Ранг", "答案", "۳", "…"]  # fmt: skip

    class RandomLLM:
        def chat(self, messages, *, max_tokens=None):
            if rng.random() < 0.1:
                raise TimeoutError("the LLM server did not answer")
            answer = "".join(rng.choice(pieces) for _ in range(rng.randrange(12)))
            return answer[: rng.randrange(len(answer) + 1)]  # maybe truncated

    for _ in range(300):
        hits = [hit(f"text {i}", index=i) for i in range(rng.randrange(13))]
        window = rng.randrange(2, 7)
        config = {"window": window, "stride": rng.randrange(1, window), "top_n": rng.randrange(1, 15)}
        out = listwise(RandomLLM(), **config).rerank("q", hits)
        assert sorted(indices(out)) == indices(hits)
        assert out[config["top_n"] :] == hits[config["top_n"] :]


def test_listwise_prompt_keeps_every_script_intact():
    texts = {
        "de": "Die Kündigungsfrist beträgt drei Monate zum Monatsende.",
        "ru": "Срок уведомления об увольнении составляет три месяца.",
        "ar": "مدة الإشعار بإنهاء العقد ثلاثة أشهر.",
        "hi": "नोटिस की अवधि तीन महीने है।",
        "th": "ระยะเวลาแจ้งล่วงหน้าคือสามเดือน",
        "zh": "解约通知期为三个月。",
        "ja": "解約の通知期間は三か月です。",
    }
    llm = ScriptedLLM("[7] > [1]")
    hits = [hit(text, index=i) for i, text in enumerate(texts.values())]
    out = listwise(llm).rerank("通知期間は？", hits)
    assert len(llm.prompts) == 1
    prompt = llm.prompts[0][-1]["content"]
    for number, text in enumerate(texts.values(), 1):
        assert f"[{number}] {text}\n" in prompt
    assert "通知期間は？" in prompt
    assert indices(out) == [6, 0, 1, 2, 3, 4, 5]


def test_listwise_prompt_cuts_passages_and_collapses_whitespace():
    llm = ScriptedLLM("[1]")
    long = "Der  erste\tAbsatz.\n\nDer zweite Absatz " + "x" * 200
    listwise(llm, passage_chars=50).rerank("q", [hit(long, index=0), hit("kurz", index=1)])
    prompt = llm.prompts[0][-1]["content"]
    assert f"[1] {' '.join(long.split())[:50]}\n[2] kurz\n" in prompt


def test_no_reranker_keeps_order():
    assert NoReranker().rerank("q", HITS) == HITS


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A randomly initialised 2-layer BERT cross-encoder saved to disk: real loading code,
    meaningless scores (no multilingual cross-encoder weights can be had here)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-ce")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "berlin", "paris", "ist", "die", "hauptstadt"]
    (path / "vocab.txt").write_text("\n".join(words + list("abcdefghijklmnopqrstuvwxyz")) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    torch.manual_seed(0)
    # initializer_range 0.2, not 0.02: with the default the scores differ only in the 5th digit
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=1,
                        initializer_range=0.2)  # fmt: skip
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


def test_cross_encoder_reorders_only_the_top_n(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    # The tiny model ranks the head in reverse; "berlin" in the tail would outscore "hauptstadt paris".
    texts = ["hauptstadt paris", "paris", "berlin ist die hauptstadt", "die", "berlin", "ist die"]
    hits = [hit(text, 1 - i / 10, index=i) for i, text in enumerate(texts)]
    config = RerankerConfig(kind="cross-encoder", model=str(tiny_cross_encoder), top_n=3, batch_size=2, max_length=32)
    out = CrossEncoderReranker(config).rerank("hauptstadt", hits)
    assert sorted(indices(out)) == indices(hits)
    assert out[3:] == hits[3:]  # the tail keeps first-stage order and scores
    head_scores = [h.score for h in out[:3]]
    assert head_scores == sorted(head_scores, reverse=True)
    direct = CrossEncoder(str(tiny_cross_encoder)).predict([("hauptstadt", text) for text in texts[:3]])
    assert indices(out[:3]) == sorted(range(3), key=lambda i: -direct[i]) == [2, 1, 0]


def test_cross_encoder_missing_model_names_the_setting(tmp_path):
    reranker = CrossEncoderReranker(RerankerConfig(kind="cross-encoder", model=str(tmp_path / "nope")))
    with pytest.raises(ModelNotFoundError, match="BABELRAG_RERANKER_MODEL"):
        reranker.rerank("q", HITS)
