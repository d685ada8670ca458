"""Names of languages and answer instructions written in the language itself.

Small models follow "answer in X" far better when the instruction is in X; languages not in
the table get the English instruction with the language named.
"""

from __future__ import annotations

# code: (English name, native name, instruction in that language)
LANGUAGES: dict[str, tuple[str, str, str]] = {
    "en": ("English", "English", "Answer in English."),
    "de": ("German", "Deutsch", "Antworte auf Deutsch."),
    "fr": ("French", "français", "Réponds en français."),
    "es": ("Spanish", "español", "Responde en español."),
    "it": ("Italian", "italiano", "Rispondi in italiano."),
    "pt": ("Portuguese", "português", "Responda em português."),
    "nl": ("Dutch", "Nederlands", "Antwoord in het Nederlands."),
    "ru": ("Russian", "русский", "Отвечай на русском языке."),
    "uk": ("Ukrainian", "українська", "Відповідай українською мовою."),
    "pl": ("Polish", "polski", "Odpowiedz po polsku."),
    "tr": ("Turkish", "Türkçe", "Türkçe cevap ver."),
    "el": ("Greek", "Ελληνικά", "Απάντησε στα ελληνικά."),
    "ro": ("Romanian", "română", "Răspunde în limba română."),
    "ar": ("Arabic", "العربية", "أجب باللغة العربية."),
    "fa": ("Persian", "فارسی", "به زبان فارسی پاسخ بده."),
    "he": ("Hebrew", "עברית", "ענה בעברית."),
    "hi": ("Hindi", "हिन्दी", "हिन्दी में उत्तर दीजिए।"),
    "bn": ("Bengali", "বাংলা", "বাংলায় উত্তর দিন।"),
    "zh": ("Chinese", "中文", "请用中文回答。"),
    "ja": ("Japanese", "日本語", "日本語で答えてください。"),
    "ko": ("Korean", "한국어", "한국어로 답하세요."),
    "th": ("Thai", "ภาษาไทย", "กรุณาตอบเป็นภาษาไทย"),
    "vi": ("Vietnamese", "Tiếng Việt", "Hãy trả lời bằng tiếng Việt."),
    "id": ("Indonesian", "Bahasa Indonesia", "Jawablah dalam bahasa Indonesia."),
}


def english_name(code: str) -> str:
    return LANGUAGES.get(code, (code, code, ""))[0]


def answer_instruction(code: str) -> str:
    """'Answer in German (Deutsch). Antworte auf Deutsch.' -- named in English and in the language."""
    english, native, own = LANGUAGES.get(code, (code, code, ""))
    named = f"Answer in {english}" + (f" ({native})" if native != english else "") + "."
    return f"{named} {own}".strip() if own and own != named else named
