"""Names of languages and answer instructions written in the language itself.

Small models follow "answer in X" far better when the instruction is in X; languages not in
the table get the English instruction with the language named.
"""

from __future__ import annotations

# code: (English name, native name, instruction in that language, "not found" in that language)
LANGUAGES: dict[str, tuple[str, str, str]] = {
    "en": ("English", "English", "Answer in English.", "The knowledge base does not contain the answer to this question."),
    "de": ("German", "Deutsch", "Antworte auf Deutsch.", "Die Wissensdatenbank enthält keine Antwort auf diese Frage."),
    "fr": ("French", "français", "Réponds en français.", "La base de connaissances ne contient pas la réponse à cette question."),
    "es": ("Spanish", "español", "Responde en español.", "La base de conocimientos no contiene la respuesta a esta pregunta."),
    "it": ("Italian", "italiano", "Rispondi in italiano.", "La base di conoscenza non contiene la risposta a questa domanda."),
    "pt": ("Portuguese", "português", "Responda em português.", "A base de conhecimento não contém a resposta a esta pergunta."),
    "nl": ("Dutch", "Nederlands", "Antwoord in het Nederlands.", "De kennisbank bevat geen antwoord op deze vraag."),
    "ru": ("Russian", "русский", "Отвечай на русском языке.", "В базе знаний нет ответа на этот вопрос."),
    "uk": ("Ukrainian", "українська", "Відповідай українською мовою.", "У базі знань немає відповіді на це питання."),
    "pl": ("Polish", "polski", "Odpowiedz po polsku.", "Baza wiedzy nie zawiera odpowiedzi na to pytanie."),
    "tr": ("Turkish", "Türkçe", "Türkçe cevap ver.", "Bilgi tabanında bu sorunun cevabı yok."),
    "el": ("Greek", "Ελληνικά", "Απάντησε στα ελληνικά.", "Η βάση γνώσεων δεν περιέχει την απάντηση σε αυτή την ερώτηση."),
    "ro": ("Romanian", "română", "Răspunde în limba română.", "Baza de cunoștințe nu conține răspunsul la această întrebare."),
    "ar": ("Arabic", "العربية", "أجب باللغة العربية.", "لا تحتوي قاعدة المعرفة على إجابة هذا السؤال."),
    "fa": ("Persian", "فارسی", "به زبان فارسی پاسخ بده.", "پایگاه دانش پاسخ این پرسش را ندارد."),
    "he": ("Hebrew", "עברית", "ענה בעברית.", "מאגר הידע אינו מכיל תשובה לשאלה זו."),
    "hi": ("Hindi", "हिन्दी", "हिन्दी में उत्तर दीजिए।", "ज्ञानकोष में इस प्रश्न का उत्तर नहीं है।"),
    "bn": ("Bengali", "বাংলা", "বাংলায় উত্তর দিন।", "জ্ঞানভান্ডারে এই প্রশ্নের উত্তর নেই।"),
    "zh": ("Chinese", "中文", "请用中文回答。", "知识库中没有这个问题的答案。"),
    "ja": ("Japanese", "日本語", "日本語で答えてください。", "ナレッジベースにはこの質問への回答がありません。"),
    "ko": ("Korean", "한국어", "한국어로 답하세요.", "지식 베이스에 이 질문에 대한 답이 없습니다."),
    "th": ("Thai", "ภาษาไทย", "กรุณาตอบเป็นภาษาไทย", "ฐานความรู้ไม่มีคำตอบสำหรับคำถามนี้"),
    "vi": ("Vietnamese", "Tiếng Việt", "Hãy trả lời bằng tiếng Việt.", "Cơ sở tri thức không có câu trả lời cho câu hỏi này."),
    "id": ("Indonesian", "Bahasa Indonesia", "Jawablah dalam bahasa Indonesia.", "Basis pengetahuan tidak memuat jawaban atas pertanyaan ini."),
    "sv": ("Swedish", "svenska", "Svara på svenska.", "Kunskapsbasen innehåller inte svaret på den här frågan."),
    "da": ("Danish", "dansk", "Svar på dansk.", "Vidensbasen indeholder ikke svaret på dette spørgsmål."),
    "nb": ("Norwegian", "norsk", "Svar på norsk.", "Kunnskapsbasen inneholder ikke svaret på dette spørsmålet."),
    "fi": ("Finnish", "suomi", "Vastaa suomeksi.", "Tietokanta ei sisällä vastausta tähän kysymykseen."),
    "cs": ("Czech", "čeština", "Odpověz česky.", "Znalostní báze neobsahuje odpověď na tuto otázku."),
    "hu": ("Hungarian", "magyar", "Válaszolj magyarul.", "A tudásbázis nem tartalmazza a választ erre a kérdésre."),
    "ur": ("Urdu", "اردو", "اردو میں جواب دیں۔", "علمی ذخیرے میں اس سوال کا جواب موجود نہیں ہے۔"),
    "ta": ("Tamil", "தமிழ்", "தமிழில் பதிலளிக்கவும்.", "அறிவுத் தளத்தில் இந்தக் கேள்விக்கான பதில் இல்லை."),
}


# Written right to left (ISO 639-1/-3 codes).
RTL_LANGUAGES = frozenset({"ar", "fa", "he", "ur", "ps", "yi", "dv", "ug", "ckb", "sd"})


def text_direction(code: str | None) -> str:
    """"rtl" for a language written right to left, else "ltr" (HTML's dir attribute)."""
    return "rtl" if code in RTL_LANGUAGES else "ltr"


def native_name(code: str) -> str:
    return LANGUAGES.get(code, (code, code, "", ""))[1]


def english_name(code: str) -> str:
    return LANGUAGES.get(code, (code, code, "", ""))[0]


def answer_instruction(code: str) -> str:
    """'Answer in German (Deutsch). Antworte auf Deutsch.' -- named in English and in the language."""
    english, native, own, _ = LANGUAGES.get(code, (code, code, "", ""))
    named = f"Answer in {english}" + (f" ({native})" if native != english else "") + "."
    return f"{named} {own}".strip() if own and own != named else named


def strict_instruction(code: str, wrong: str | None) -> str:
    """The stronger instruction of the second try, after an answer in language ``wrong``."""
    english, native, own, _ = LANGUAGES.get(code, (code, code, "", ""))
    named = english + (f" ({native})" if native != english else "")
    avoid = f", not in {english_name(wrong)}" if wrong and wrong != code else ""
    text = f"IMPORTANT: write every word of the answer in {named}{avoid}. Translate facts from the sources into {english}."
    return f"{text} {own}".strip()


def not_found_message(code: str | None) -> str | None:
    """"The knowledge base does not contain the answer" in language ``code``; None if not in the table."""
    entry = LANGUAGES.get(code or "")
    return entry[3] if entry else None
