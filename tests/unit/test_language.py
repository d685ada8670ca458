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


@pytest.mark.parametrize("code, text", SAMPLES.items())
def test_detects_short_questions(language, code, text):
    assert language.detect(text) == code


def test_short_follow_up_and_no_letters(language):
    assert language.detect("Und warum?") == "de"
    assert language.detect("12345 !!") is None
    assert language.detect("") is None


def test_unknown_code_in_config_is_a_config_error():
    from rag.config import LanguageConfig
    from rag.errors import ConfigError
    from rag.language import LinguaIdentifier

    with pytest.raises(ConfigError, match="'xx' is not an ISO 639-1 code"):
        LinguaIdentifier(LanguageConfig(languages=["en", "xx"])).detect("hello there")
