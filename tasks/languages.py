"""Language codes the tasks know: names (in English and in the language itself) and the
translation-instruction templates of Guo et al. (2024) stage 3, one per language.

An unknown code is an error that names the binding, never a silently untagged example. Add a
language by adding a row; templates can also be overridden per experiment from gin.
"""
from __future__ import annotations

from typing import Mapping, Optional

# code: (English name, {code of the language a name is written in: name}). The instruction in
# language X names both languages in X, so every row carries its name in the instruction languages.
NAMES = {
    'en': {'en': 'English', 'de': 'Englisch', 'fr': 'anglais', 'cs': 'angličtiny', 'zh': '英语',
           'sw': 'Kiingereza'},
    'de': {'en': 'German', 'de': 'Deutsch', 'fr': 'allemand', 'cs': 'němčiny', 'zh': '德语',
           'sw': 'Kijerumani'},
    'fr': {'en': 'French', 'de': 'Französisch', 'fr': 'français', 'cs': 'francouzštiny',
           'zh': '法语', 'sw': 'Kifaransa'},
    'cs': {'en': 'Czech', 'de': 'Tschechisch', 'fr': 'tchèque', 'cs': 'češtiny', 'zh': '捷克语',
           'sw': 'Kicheki'},
    'zh': {'en': 'Chinese', 'de': 'Chinesisch', 'fr': 'chinois', 'cs': 'čínštiny', 'zh': '中文',
           'sw': 'Kichina'},
    'sw': {'en': 'Swahili', 'de': 'Suaheli', 'fr': 'swahili', 'cs': 'svahilštiny', 'zh': '斯瓦希里语',
           'sw': 'Kiswahili'},
    'zu': {'en': 'Zulu', 'de': 'Zulu', 'fr': 'zoulou', 'cs': 'zuluštiny', 'zh': '祖鲁语',
           'sw': 'Kizulu'},
    'wo': {'en': 'Wolof', 'de': 'Wolof', 'fr': 'wolof', 'cs': 'wolofštiny', 'zh': '沃洛夫语',
           'sw': 'Kiwolof'},
    'uk': {'en': 'Ukrainian', 'de': 'Ukrainisch', 'fr': 'ukrainien', 'cs': 'ukrajinštiny',
           'zh': '乌克兰语', 'sw': 'Kiukreni'},
    'ro': {'en': 'Romanian', 'de': 'Rumänisch', 'fr': 'roumain', 'cs': 'rumunštiny', 'zh': '罗马尼亚语',
           'sw': 'Kiromania'},
    'ru': {'en': 'Russian', 'de': 'Russisch', 'fr': 'russe', 'cs': 'ruštiny', 'zh': '俄语',
           'sw': 'Kirusi'},
    'es': {'en': 'Spanish', 'de': 'Spanisch', 'fr': 'espagnol', 'cs': 'španělštiny', 'zh': '西班牙语',
           'sw': 'Kihispania'},
}

# Stage 3 templates: {src}/{tgt} are the language names written in the template's language,
# {text} the source sentence. The prompt ends where the translation begins.
INSTRUCTION_TEMPLATES = {
    'en': 'Translate the following text from {src} to {tgt}.\n{src}: {text}\n{tgt}:',
    'de': 'Übersetze den folgenden Text aus dem {src} ins {tgt}.\n{src}: {text}\n{tgt}:',
    'fr': 'Traduisez le texte suivant du {src} vers le {tgt}.\n{src} : {text}\n{tgt} :',
    'cs': 'Přeložte následující text z {src} do {tgt}.\n{text}\n',
    'zh': '将下面的文本从{src}翻译成{tgt}。\n{src}：{text}\n{tgt}：',
    'sw': 'Tafsiri maandishi yafuatayo kutoka {src} hadi {tgt}.\n{src}: {text}\n{tgt}:',
}


def check(code: str, what: str) -> str:
  if code not in NAMES:
    raise ValueError(f'{what}: unknown language code {code!r} (known: {", ".join(sorted(NAMES))}; '
                     'add it to tasks/languages.py)')
  return code


def name(code: str, in_language: str, what: str = 'language') -> str:
  check(code, what)
  names = NAMES[code]
  if in_language not in names:
    raise ValueError(f'{what}: no name for {code!r} written in {in_language!r} '
                     '(add it to tasks/languages.py NAMES)')
  return names[in_language]


def instruction_prefix(src: str, tgt: str, instruction_language: str, text: str,
                       templates: Optional[Mapping[str, str]] = None, what: str = 'instruction'
                       ) -> str:
  """The stage-3 prompt for one sentence, written in `instruction_language`."""
  templates = {**INSTRUCTION_TEMPLATES, **(templates or {})}
  if instruction_language not in templates:
    raise ValueError(f'{what}: no instruction template for language {instruction_language!r} '
                     f'(have: {", ".join(sorted(templates))}; set it in `templates`)')
  return templates[instruction_language].format(
      src=name(src, instruction_language, what), tgt=name(tgt, instruction_language, what),
      text=text)
