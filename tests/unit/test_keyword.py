import pytest

from rag.errors import StoreError
from rag.keyword import KeywordIndex, tokenize

# One fact, "The Eiffel Tower is 330 metres tall and stands in Paris", in eight languages,
# with the question each reader would ask. Each sentence shares its question's words only in
# its own language; the number and the name match across languages too, which is what the
# ranking tests must see through.
FACTS = {
    "en": (
        "The Eiffel Tower in Paris is 330 metres tall and was finished in 1889.",
        "How tall is the Eiffel Tower in Paris?",
    ),
    "de": (
        "Der Eiffelturm in Paris ist 330 Meter hoch und wurde 1889 fertiggestellt.",
        "Wie hoch ist der Eiffelturm in Paris?",
    ),
    "ru": (
        "Эйфелева башня в Париже имеет высоту 330 метров и была достроена в 1889 году.",
        "Какова высота Эйфелевой башни в Париже?",
    ),
    "ar": (
        "يبلغ ارتفاع برج إيفل في باريس 330 مترا وقد اكتمل بناؤه عام 1889.",
        "كم يبلغ ارتفاع برج إيفل في باريس؟",
    ),
    "hi": (
        "पेरिस में एफ़िल टॉवर की ऊँचाई 330 मीटर है और यह 1889 में बनकर पूरा हुआ।",
        "पेरिस में एफ़िल टॉवर की ऊँचाई कितनी है?",
    ),
    "th": (
        "หอไอเฟลในกรุงปารีสมีความสูง 330 เมตร และสร้างเสร็จในปี 1889",
        "หอไอเฟลในปารีสมีความสูงเท่าไร",
    ),
    "zh": (
        "巴黎的埃菲尔铁塔高330米，于1889年建成。",
        "巴黎埃菲尔铁塔有多高？",
    ),
    "ja": (
        "パリのエッフェル塔の高さは330メートルで、1889年に完成した。",
        "エッフェル塔の高さはどれくらいですか？",
    ),
}
# Unrelated chunks, so that document frequencies are not all one.
FILLER = {
    "en": "The museum opens at nine and closes at six on weekdays.",
    "de": "Das Museum öffnet um neun Uhr und schließt werktags um sechs.",
    "ru": "Музей открывается в девять и закрывается в шесть по будням.",
    "zh": "博物馆工作日九点开门，六点关门。",
}


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> KeywordIndex:
    ids = [f"fact-{lang}" for lang in FACTS] + [f"filler-{lang}" for lang in FILLER]
    texts = [text for text, _ in FACTS.values()] + list(FILLER.values())
    languages = list(FACTS) + list(FILLER)
    return KeywordIndex.build(tmp_path_factory.mktemp("kw"), ids, texts, languages)


def test_english_words_are_casefolded_and_lose_function_words():
    assert tokenize("The Tower of PARIS, built in 1889", "en") == ["tower", "paris", "built", "1889"]


def test_german_casefolds_sharp_s_and_keeps_umlauts():
    assert tokenize("Die Straße über den Fluß", "de") == ["strasse", "über", "fluss"]
    assert tokenize("STRASSE") == tokenize("Straße")


def test_russian_words():
    assert tokenize("Эйфелева башня в Париже", "ru") == ["эйфелева", "башня", "париже"]


def test_arabic_diacritics_and_tatweel_are_stripped():
    assert tokenize("كَتَبَ", "ar") == tokenize("كتب", "ar") == ["كتب"]
    assert tokenize("كـــتب", "ar") == ["كتب"]


def test_hindi_vowel_signs_stay_inside_words():
    assert tokenize("हिन्दी", "hi") == ["हिन्दी"]
    assert tokenize("भारत की राजभाषा हिन्दी है", "hi") == ["भारत", "राजभाषा", "हिन्दी"]


def test_unspaced_scripts_give_overlapping_bigrams():
    assert tokenize("埃菲尔铁塔", "zh") == ["埃菲", "菲尔", "尔铁", "铁塔"]
    assert tokenize("エッフェル塔", "ja") == ["エッ", "ッフ", "フェ", "ェル", "ル塔"]
    assert tokenize("塔", "zh") == ["塔"]  # a one-character run is its own token


def test_thai_bigrams_keep_vowel_and_tone_marks_on_their_letter():
    # "ความสูง" (height): the vowel mark of "สู" belongs to its consonant, never to a bigram alone
    assert tokenize("ความสูง", "th") == ["คว", "วา", "าม", "มสู", "สูง"]


def test_numbers_are_tokens_in_any_script():
    assert tokenize("330 metres", "en") == ["330", "metres"]
    assert tokenize("330 เมตร", "th") == ["330", "เม", "มต", "ตร"]
    assert tokenize("٣٣٠ مترا", "ar") == tokenize("330 مترا", "ar")  # Arabic-Indic digits


def test_english_function_words_inside_thai_text_are_dropped():
    tokens = tokenize("ภาษาไทย with the English word", "th")
    assert "the" not in tokens
    assert "with" not in tokens
    assert "english" in tokens
    # stopwords go whatever the language says, even when it is unknown
    assert "the" not in tokenize("ภาษาไทย with the English word")


def test_short_latin_tokens_are_dropped_only_in_non_latin_languages():
    assert tokenize("北京 NFL km Paris", "zh") == ["北京", "paris"]
    assert tokenize("NFL km Paris", "en") == ["nfl", "km", "paris"]
    assert tokenize("北京 NFL km 2024", None) == ["北京", "nfl", "km", "2024"]


def test_nothing_to_index():
    assert tokenize("") == []
    assert tokenize("!!! ... ---") == []
    assert tokenize("the of and", "en") == []


# --- KeywordIndex ----------------------------------------------------------------------


@pytest.mark.parametrize("language", list(FACTS))
def test_query_ranks_its_own_language_first(index, language):
    _, question = FACTS[language]
    hits = index.search(question, language=language, top_k=5)
    assert hits[0][0] == f"fact-{language}"
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(score > 0 for score in scores)


def test_chinese_query_finds_the_chinese_phrase(index):
    assert index.search("埃菲尔铁塔", language="zh", top_k=3)[0][0] == "fact-zh"


def test_languages_restrict_results_without_changing_scores(index):
    # "330" and "1889" occur in every fact: without a filter all eight languages match
    every = dict(index.search("330 1889", language=None, top_k=20))
    assert len(every) == len(FACTS)
    (only,) = index.search("330 1889", language=None, top_k=20, languages=["de"])
    assert only == ("fact-de", every["fact-de"])  # a filter, not another scoring
    both = index.search("330 museum", language="en", top_k=20, languages=["en", "de"])
    assert {hit for hit, _ in both} == {"fact-en", "fact-de", "filler-en", "filler-de"}  # "Museum" too


def test_top_k_larger_than_the_index(index):
    hits = index.search("330", language=None, top_k=1000)
    assert len(hits) == len(FACTS) < len(index)


def test_top_k_cuts_the_ranking(index):
    assert index.search("330", language=None, top_k=3) == index.search("330", language=None, top_k=100)[:3]


@pytest.mark.parametrize("query", ["", "  ?! ", "the of and", "Qwertzuiop"])
def test_query_without_known_terms_finds_nothing(index, query):
    assert index.search(query, language="en", top_k=5) == []


def test_bad_top_k_is_refused(index):
    with pytest.raises(ValueError, match="top_k"):
        index.search("330", language=None, top_k=0)


def test_ideal_score_is_what_a_chunk_holding_every_term_once_scores(index):
    # the German fact holds "eiffelturm", "paris" and "hoch" once each and is of about average length
    (hit,) = index.search("Wie hoch ist der Eiffelturm in Paris?", language="de", top_k=1, languages=["de"])
    ideal = index.ideal_score("Wie hoch ist der Eiffelturm in Paris?", "de")
    assert 0.7 < hit[1] / ideal < 1.3
    assert index.ideal_score("the of and", "en") == 0.0


def test_build_refuses_duplicate_ids_and_ragged_input(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        KeywordIndex.build(tmp_path / "a", ["a", "a"], ["one", "two"], ["en", "en"])
    with pytest.raises(ValueError, match="parallel"):
        KeywordIndex.build(tmp_path / "b", ["a"], ["one", "two"], ["en", "en"])


def test_index_without_any_term_finds_nothing(tmp_path):
    empty = KeywordIndex.build(tmp_path / "empty", [], [], [])
    blank = KeywordIndex.build(tmp_path / "blank", ["a", "b"], ["", "the"], ["en", None])
    assert len(empty) == 0 and len(blank) == 2
    assert blank.search("anything", language="en", top_k=3) == []
    assert empty.ideal_score("anything", "en") == 0.0


def test_an_index_reopened_from_its_folder_gives_identical_results(index):
    reopened = KeywordIndex.open(index.path)
    assert len(reopened) == len(index)
    for language, (_, question) in FACTS.items():
        assert reopened.search(question, language=language, top_k=10) == index.search(
            question, language=language, top_k=10
        )


def test_writes_are_incremental_and_seen_by_another_reader_after_reload(tmp_path):
    index = KeywordIndex.build(tmp_path / "kw", ["a#0", "b#0"], ["Eiffelturm Paris", "Zahnrad gebrochen"], ["de", "de"],
                               sources=["a", "b"])  # fmt: skip
    reader = KeywordIndex.open(tmp_path / "kw")  # e.g. another process
    with index.writing() as writer:
        writer.delete_sources(["a"])
        writer.add(["c#0"], ["Zahnrad Getriebe"], ["de"], ["c"])
    assert sorted(h for h, _ in index.search("Zahnrad Eiffelturm", language="de", top_k=5)) == ["b#0", "c#0"]
    assert len(reader) == 2 and reader.search("Getriebe", language="de", top_k=5) == []
    reader.reload()
    assert [h for h, _ in reader.search("Getriebe", language="de", top_k=5)] == ["c#0"]


def test_a_failed_write_changes_nothing(tmp_path):
    index = KeywordIndex.build(tmp_path / "kw", ["a#0"], ["Eiffelturm"], ["de"], sources=["a"])
    with pytest.raises(RuntimeError), index.writing() as writer:
        writer.delete_sources(["a"])
        raise RuntimeError("crash in the middle")
    assert [h for h, _ in KeywordIndex.open(tmp_path / "kw").search("Eiffelturm", language="de", top_k=5)] == ["a#0"]


def test_unicode_ids_and_sources(tmp_path):
    ids = ["文書/第1章#0", "Straße.md#2", "तथ्य-१"]
    built = KeywordIndex.build(tmp_path / "kw", ids, ["埃菲尔铁塔", "Eiffelturm", "एफ़िल टॉवर"], ["zh", "de", "hi"],
                               sources=["文書/第1章", "Straße.md", "तथ्य"])  # fmt: skip
    assert built.search("铁塔", language="zh", top_k=3)[0][0] == "文書/第1章#0"
    assert built.search("टॉवर", language="hi", top_k=3)[0][0] == "तथ्य-१"
    with built.writing() as writer:
        writer.delete_sources(["Straße.md"])
    assert built.search("Eiffelturm", language="de", top_k=3) == []


def test_a_broken_folder_says_what_to_do(tmp_path):
    (tmp_path / "meta.json").write_text("{not json", "utf-8")
    with pytest.raises(StoreError, match="delete that folder"):
        KeywordIndex.open(tmp_path)


def test_languages_of_chunk_ids_come_from_the_index(index):
    asked = ["fact-de", "filler-zh", "fact-ar", "no-such-chunk"]
    assert index.languages(asked) == {"fact-de": "de", "filler-zh": "zh", "fact-ar": "ar"}
    assert index.languages([]) == {}


def test_languages_follow_writes_and_keep_chunks_without_a_language(tmp_path):
    index = KeywordIndex.build(tmp_path / "kw", ["a#0", "b#0"], ["Eiffelturm Paris", "gear broken"], ["de", None],
                               sources=["a", "b"])  # fmt: skip
    assert index.languages(["a#0", "b#0"]) == {"a#0": "de", "b#0": None}
    with index.writing() as writer:
        writer.delete_sources(["a"])
        writer.add(["a#1"], ["Torre Eiffel"], ["es"], ["a"])
    assert index.languages(["a#0", "a#1", "b#0"]) == {"a#1": "es", "b#0": None}


# -- chunks and vectors served from the index (format 4) -----------------------------------


def _chunks(source: str, texts: dict[str, str], seed: int):
    """One chunk per (language, text), with a random unit vector each."""
    import numpy as np

    from rag.types import Chunk

    chunks = [
        Chunk(
            id=f"{source}#{i}",
            text=text,
            source=source,
            index=i,
            start=0,
            end=len(text),
            language=language,
            doc_hash=source,
            title="Über den Turm" if i == 0 else None,
            page=i + 1 if i % 2 else None,
        )  # fmt: skip
        for i, (language, text) in enumerate(texts.items())
    ]
    vectors = np.random.default_rng(seed).standard_normal((len(chunks), 24)).astype(np.float32)
    return chunks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


FACT_TEXTS = {lang: fact for lang, (fact, _) in FACTS.items()}


def _served(index, chunks, vectors):
    import numpy as np

    got = index.candidates([c.id for c in chunks])
    return (
        index.chunks([c.id for c in chunks]) == {c.id: c for c in chunks}
        and set(got) == {c.id for c in chunks}
        and all(got[c.id][0] == c.language and np.array_equal(got[c.id][1], v) for c, v in zip(chunks, vectors))
    )


def test_chunks_and_vectors_are_served_as_written_in_every_language(tmp_path):
    chunks, vectors = _chunks("/kb/fact.md", FACT_TEXTS, seed=1)
    index = KeywordIndex.open(tmp_path / "kw")
    with index.writing() as writer:
        writer.add_chunks(chunks, vectors)
    assert _served(index, chunks, vectors)
    assert index.candidates(["nope"]) == {} and index.chunks([]) == {}
    # a reader in another process sees them; language tags that do not pack into 8 ASCII bytes
    # are left to the store (the retriever asks it), never guessed
    odd, odd_vectors = _chunks("/kb/odd.md", {"zh-Hant": "埃菲尔铁塔", "x-klingon-tlh": "tlhIngan", None: "330"}, 2)
    with index.writing() as writer:
        writer.add_chunks(odd, odd_vectors)
    reader = KeywordIndex.open(tmp_path / "kw")
    got = reader.candidates([c.id for c in odd])
    assert set(got) == {"/kb/odd.md#0", "/kb/odd.md#2"}
    assert got["/kb/odd.md#0"][0] == "zh-Hant" and got["/kb/odd.md#2"][0] is None
    assert reader.chunks([c.id for c in odd]) == {c.id: c for c in odd}
    assert _served(reader, chunks, vectors)


def test_vectors_survive_a_failed_write_a_torn_row_and_a_rebuild(tmp_path):
    folder = tmp_path / "kw"
    first, first_vectors = _chunks("/kb/a.md", FACT_TEXTS, seed=1)
    index = KeywordIndex.open(folder)
    with index.writing() as writer:
        writer.add_chunks(first, first_vectors)
    reader = KeywordIndex.open(folder)  # another process, its vector file mapped
    assert _served(reader, first, first_vectors)
    # a write that fails after its vectors were appended: rolled back, the rows unused
    second, second_vectors = _chunks("/kb/b.md", FACT_TEXTS, seed=2)
    with pytest.raises(RuntimeError), index.writing() as writer:
        writer.add_chunks(second, second_vectors)
        raise RuntimeError("crash in the middle")
    assert index.candidates([c.id for c in second]) == {}
    # a writer killed halfway through a row: the next one cuts the torn row off and appends
    (vector_file,) = folder.glob("vectors-*.f32")
    with vector_file.open("ab") as f:
        f.write(b"\x01\x02\x03")
    with index.writing() as writer:
        writer.add_chunks(second, second_vectors)
    assert _served(index, second, second_vectors) and _served(index, first, first_vectors)
    reader.reload()
    assert _served(reader, second, second_vectors)  # the reader maps the grown file again
    # a rebuild writes a new file; the old one goes once it is committed, the reader follows
    third, third_vectors = _chunks("/kb/c.md", FACT_TEXTS, seed=3)
    with index.writing() as writer:
        writer.clear()
        writer.add_chunks(third, third_vectors)
    (rebuilt,) = folder.glob("vectors-*.f32")
    assert rebuilt != vector_file
    reader.reload()
    assert _served(reader, third, third_vectors) and reader.candidates([c.id for c in first]) == {}
    # sources being rewritten are left to the store
    reader.rewriting = {"/kb/c.md"}
    assert reader.candidates([c.id for c in third]) == {} and reader.chunks([c.id for c in third]) == {}


def test_a_rebuild_with_nothing_left_never_reuses_a_generation(tmp_path):
    """Readers keep a vector file mapped by its generation: a rebuild that empties the index
    (every file deleted, a collection recreated) removes every vector file, and the next write
    must not take generation 1 again, or a reader that mapped the old generation 1 serves the
    old file's rows for the new chunks."""
    folder = tmp_path / "kw"
    old, old_vectors = _chunks("/kb/old.md", FACT_TEXTS, seed=1)
    index = KeywordIndex.open(folder)
    with index.writing() as writer:
        writer.add_chunks(old, old_vectors)
    reader = KeywordIndex.open(folder)  # maps the first file
    assert _served(reader, old, old_vectors)
    with index.writing() as writer:  # everything deleted: rebuilt empty, its vector file removed
        writer.clear()
    assert not list(folder.glob("vectors-*.f32"))
    new, new_vectors = _chunks("/kb/new.md", FACT_TEXTS, seed=2)  # same ids' count and rows as before
    with index.writing() as writer:
        writer.add_chunks(new, new_vectors)
    assert [p.name for p in folder.glob("vectors-*.f32")] == [f"vectors-2-{new_vectors.shape[1]}.f32"]
    reader.reload()
    assert _served(reader, new, new_vectors)
    assert _served(KeywordIndex.open(folder), new, new_vectors)
