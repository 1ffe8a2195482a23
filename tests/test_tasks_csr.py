"""Code-switching restore on Multi30k with the MUSE en-de / de-en dictionaries (../shared/data)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tasks import csr, dictionaries, vocab as vocab_lib
from tasks.sources import InputError


@pytest.fixture(scope='module')
def m30k(shared_data):
  return shared_data / 'parallel' / 'multi30k'


@pytest.fixture(scope='module')
def en_de(shared_data):
  return dictionaries.top_k(dictionaries.read_dictionary(
      str(shared_data / 'dict' / 'muse' / 'en-de.txt')), 3)


def _core(word):
  return ''.join(ch for ch in word if ch.isalnum() or ch in "'-’").lower()


def test_switches_35_percent_of_words_from_the_top3_and_deletes_nothing(m30k, en_de):
  switcher = csr.CodeSwitcher({'en': en_de})
  lines = (m30k / 'train.en').read_text(encoding='utf-8').splitlines()[:600]
  chosen_total = words_total = changed = chosen_with_entry = 0
  for i, line in enumerate(lines):
    out, chosen, changed_mask = switcher.switch(tf.constant(line), tf.constant('en'),
                                                tf.constant([7, i]))
    orig, new = line.split(), out.numpy().decode().split()
    chosen = chosen.numpy()
    assert len(new) == len(orig)  # nothing deleted or inserted
    # Exactly ceil(0.35 * #words) positions are chosen in every sentence.
    assert chosen.sum() == math.ceil(0.35 * len(orig))
    for w, n, c in zip(orig, new, chosen):
      if w != n:
        assert c and n.lower().strip('.,!?;:"()') in en_de[_core(w)]
      if c and _core(w) in en_de:
        chosen_with_entry += 1
    chosen_total += chosen.sum()
    words_total += len(orig)
    changed += changed_mask.numpy().sum()
  # Chosen fraction: >= 35% by construction, at most ceil() round-up above it (tolerance 0.05).
  assert 0.35 <= chosen_total / words_total < 0.40
  # Words actually changed: the chosen ones with an entry, except when the drawn candidate is
  # the word itself (MUSE lists e.g. 'blue' -> 'blue'); on Multi30k English that is >= 80%.
  assert 0.8 * chosen_with_entry <= changed <= chosen_with_entry
  assert changed / words_total > 0.2


def test_task_restores_the_original_on_both_sides_deterministically(m30k, shared_data, tmp_path):
  en = (m30k / 'val.en').read_text(encoding='utf-8').splitlines()[:100]
  de = (m30k / 'val.de').read_text(encoding='utf-8').splitlines()[:100]
  (tmp_path / 'v.en').write_text('\n'.join(en) + '\n', encoding='utf-8')
  (tmp_path / 'v.de').write_text('\n'.join(de) + '\n', encoding='utf-8')
  vocab = vocab_lib.sentencepiece_vocabulary(
      train_files=[str(m30k / 'train.en'), str(m30k / 'train.de')], vocab_size=4000,
      user_defined_symbols=['<en>', '<de>'])
  muse = shared_data / 'dict' / 'muse'
  kw = dict(parallel_files={'train': {'en': str(tmp_path / 'v.en'), 'de': str(tmp_path / 'v.de')}},
            dictionaries={'en': str(muse / 'en-de.txt'), 'de': str(muse / 'de-en.txt')},
            vocabulary=vocab)
  task = csr.csr_task(name='test_csr', **kw)

  def examples(seed):
    ds = task.get_dataset({'inputs': 128, 'targets': 128}, split='train', shuffle=False, seed=seed)
    return list(ds.as_numpy_iterator())

  exs = examples(0)
  assert len(exs) == 200
  n_diff = 0
  for i, ex in enumerate(exs):
    lang, original = ('en', en[i // 2]) if i % 2 == 0 else ('de', de[i // 2])
    assert ex['lang'].decode() == lang
    assert ex['targets_pretokenized'].decode() == original.strip()  # restores exactly
    if 2 not in ex['targets']:  # characters the 4000-piece vocabulary lacks decode as unk (2)
      assert vocab.decode(ex['targets'].tolist()) == original.strip()
    inp = ex['inputs_pretokenized'].decode()
    assert inp.startswith(f'<{lang}> ')
    assert len(inp.split()) == len(original.split()) + 1
    n_diff += inp[len(lang) + 3:] != original.strip()
  assert n_diff > 150  # almost every sentence has a switched word, in both languages
  again, other = examples(0), examples(1)
  assert all(np.array_equal(a['inputs'], b['inputs']) for a, b in zip(exs, again))
  assert any(not np.array_equal(a['inputs'], b['inputs']) for a, b in zip(exs, other))


def test_induced_dictionary_from_the_bitext(m30k):
  en = (m30k / 'train.en').read_text(encoding='utf-8').splitlines()[:4000]
  de = (m30k / 'train.de').read_text(encoding='utf-8').splitlines()[:4000]
  d = dictionaries.induce_dictionary(en, de, top=3)
  assert 'hund' in d['dog'] and 'ball' in d['ball'] and 'fahrrad' in d['bike']
  assert all(len(c) <= 3 for c in d.values())


def test_bad_dictionaries(tmp_path):
  p = tmp_path / 'bad.txt'
  p.write_text('dog hund\ncat\nhouse haus\n', encoding='utf-8')
  with pytest.raises(InputError, match=r'bad\.txt:2: expected `source target`'):
    dictionaries.read_dictionary(str(p))
  t = tmp_path / 'bad.tsv'
  t.write_text('dog\thund\ncat\t \n', encoding='utf-8')
  with pytest.raises(InputError, match=r'bad\.tsv:2: expected 2 tab-separated'):
    dictionaries.read_dictionary(str(t))
  u = tmp_path / 'utf.txt'
  u.write_bytes(b'dog hund\nk\xe4se cheese\n')
  with pytest.raises(InputError, match=r'utf\.txt:2: invalid UTF-8'):
    dictionaries.read_dictionary(str(u))


def test_dictd_reader(tmp_path):
  import gzip
  # A FreeDict-shaped dictd pair: headword line, then translations.
  entries = [('cat', 'cat /kæt/\nKatze <fem, n, sg>\n'), ('dog', 'dog /dɒg/\nHund, Köter\n')]
  body, index, off = b'', [], 0
  b64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

  def enc(n):
    s = ''
    while True:
      s = b64[n % 64] + s
      n //= 64
      if not n:
        return s

  for head, text in entries:
    raw = text.encode()
    index.append(f'{head}\t{enc(off)}\t{enc(len(raw))}')
    body += raw
    off += len(raw)
  (tmp_path / 'eng-deu.index').write_text('\n'.join(index) + '\n', encoding='utf-8')
  with gzip.open(tmp_path / 'eng-deu.dict.dz', 'wb') as f:
    f.write(body)
  d = dictionaries.read_dictionary(str(tmp_path / 'eng-deu.index'))
  assert d == {'cat': ['Katze'], 'dog': ['Hund', 'Köter']}
