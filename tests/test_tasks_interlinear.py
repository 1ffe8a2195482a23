"""Sources, interlinear documents and stage-3 instructions, on Multi30k and the CES-XML Bibles."""
import json
import re

import numpy as np
import pytest
import seqio

from tasks import interlinear, sources, vocab as vocab_lib
from tasks.sources import InputError

TAG = re.compile(r'<(en|de)>')


@pytest.fixture(scope='module')
def m30k(shared_data):
  return shared_data / 'parallel' / 'multi30k'


@pytest.fixture(scope='module')
def vocab(m30k):
  return vocab_lib.sentencepiece_vocabulary(
      train_files=[str(m30k / 'train.en'), str(m30k / 'train.de')], vocab_size=4000,
      user_defined_symbols=['<en>', '<de>'])


@pytest.fixture(scope='module')
def pairs(m30k):
  en = (m30k / 'val.en').read_text(encoding='utf-8').splitlines()
  de = (m30k / 'val.de').read_text(encoding='utf-8').splitlines()
  return en, de


def _files(m30k):
  return {'train': {'en': str(m30k / 'val.en'), 'de': str(m30k / 'val.de')}}


def _docs(task, n=None, length=64):
  ds = task.get_dataset({'targets': length}, split='train', shuffle=False)
  return [e['targets'] for e in (ds.take(n) if n else ds).as_numpy_iterator()]


def _segments(text):
  """[(lang, sentence), ...] of a tagged document."""
  parts = TAG.split(text)[1:]
  return [(parts[i], parts[i + 1].strip()) for i in range(0, len(parts), 2)]


def test_documents_alternate_languages_and_never_break_a_pair(m30k, vocab, pairs):
  en, de = pairs
  true_pairs = set(zip((s.strip() for s in en), (s.strip() for s in de)))
  task = interlinear.interlinear_task(
      name='test_il', parallel_files=_files(m30k), vocabulary=vocab, pairs_per_document=4,
      sequence_length=128, separator=' ', source_language='en')
  docs = _docs(task, length=128)
  n_pairs = 0
  sizes = []
  for d in docs:
    assert len(d) <= 128 and d[-1] == 1
    segs = _segments(vocab.decode(d.tolist()))
    assert [l for l, _ in segs] == ['en', 'de'] * (len(segs) // 2) and len(segs) % 2 == 0
    sizes.append(len(segs) // 2)
    for (_, s), (_, t) in zip(segs[::2], segs[1::2]):
      # Not cut (only a pair longer than the sequence alone is), and no unknown characters.
      if len(d) < 127 and '⁇' not in s + t:
        assert (s, t) in true_pairs
      n_pairs += 1
  assert max(sizes) == 4 and min(sizes) >= 1
  assert 2 in sizes or 3 in sizes  # the 128-token limit ended some documents early
  # Every pair is used once, in order, the last, unfinished document included.
  assert n_pairs == len(en)


@pytest.mark.parametrize('order', ['source_first', 'both', 'random'])
def test_a_single_pass_loses_no_pair(tmp_path, vocab, pairs, order):
  """Issue 13.4: 3 aligned lines and a 512-token sequence make one document, not none; 17 pairs in
  groups of 8 make 8 + 8 + 1."""
  en, de = pairs
  for n, want in ((3, [3]), (17, [8, 8, 1])):
    (tmp_path / 'a.en').write_text('\n'.join(en[:n]) + '\n', encoding='utf-8')
    (tmp_path / 'a.de').write_text('\n'.join(de[:n]) + '\n', encoding='utf-8')
    task = interlinear.interlinear_task(
        name=f'test_il_flush_{order}_{n}', vocabulary=vocab, order=order, pairs_per_document=8,
        sequence_length=512, separator=' ', source_language='en',
        parallel_files={'train': {'en': str(tmp_path / 'a.en'), 'de': str(tmp_path / 'a.de')}})
    docs = _docs(task, length=512)
    sizes = [len(_segments(vocab.decode(d.tolist()))) // 2 for d in docs]
    # 'both': each group of pairs in both directions, alternating.
    assert sizes == ([s for s in want for _ in (0, 1)] if order == 'both' else want), (order, n, sizes)


def test_orders_both_and_random(m30k, vocab):
  kw = dict(parallel_files=_files(m30k), vocabulary=vocab, pairs_per_document=3,
            sequence_length=64, separator=' ', source_language='en')
  both = _docs(interlinear.interlinear_task(name='test_il_both', order='both', **kw), 40)
  firsts = [_segments(vocab.decode(d.tolist()))[0][0] for d in both]
  assert firsts == ['en', 'de'] * 20  # the same pairs in both directions, alternating
  rnd = interlinear.interlinear_task(name='test_il_rnd', order='random', seed=1, **kw)
  docs = _docs(rnd, 200)
  firsts = [_segments(vocab.decode(d.tolist()))[0][0] for d in docs]
  assert 0.35 < firsts.count('de') / 200 < 0.65  # p = 0.5, sd 0.035
  for d in docs:  # one direction throughout a document
    langs = [l for l, _ in _segments(vocab.decode(d.tolist()))]
    assert langs == [langs[0], langs[1]] * (len(langs) // 2)
  again = _docs(interlinear.interlinear_task(name='test_il_rnd', order='random', seed=1, **kw), 200)
  assert all(np.array_equal(a, b) for a, b in zip(docs, again))


def test_source_language_instructions(m30k, vocab):
  task = interlinear.translation_instruction_task(
      name='test_instr', parallel_files=_files(m30k), vocabulary=vocab)
  ex = list(task.get_dataset({'inputs': 128, 'targets': 64}, split='train', shuffle=False)
            .take(2).as_numpy_iterator())
  assert ex[0]['inputs_pretokenized'].decode().startswith('Translate the following text from '
                                                          'English to German.')
  assert ex[1]['inputs_pretokenized'].decode().startswith('Übersetze den folgenden Text aus dem '
                                                          'Deutsch ins Englisch.')
  base = interlinear.translation_instruction_task(
      name='test_instr_en', parallel_files=_files(m30k), vocabulary=vocab,
      instruction_language='en')
  ex = list(base.get_dataset({'inputs': 128, 'targets': 64}, split='train', shuffle=False)
            .take(2).as_numpy_iterator())
  assert ex[1]['inputs_pretokenized'].decode().startswith('Translate the following text from '
                                                          'German to English.')
  with pytest.raises(ValueError, match="unknown language code 'xx'"):
    interlinear.translation_instruction_task(
        name='t', parallel_files=_files(m30k), vocabulary=vocab, instruction_language='xx')


def test_bad_parallel_input_is_an_error_or_a_counted_skip(tmp_path, m30k, vocab):
  en = (m30k / 'val.en').read_text(encoding='utf-8').splitlines()[:50]
  de = (m30k / 'val.de').read_text(encoding='utf-8').splitlines()[:50]
  (tmp_path / 'a.en').write_text('\n'.join(en) + '\n', encoding='utf-8')
  (tmp_path / 'a.de').write_text('\n'.join(de[:49]) + '\n', encoding='utf-8')
  with pytest.raises(InputError, match=r'differ in length: .*a\.en has 50 lines, .*a\.de has 49'):
    sources.parallel_text_source({'train': {'en': str(tmp_path / 'a.en'),
                                            'de': str(tmp_path / 'a.de')}}, 'test')
  de2 = list(de)
  de2[10] = ''
  de2[20] = '   '
  (tmp_path / 'b.de').write_text('\n'.join(de2) + '\n', encoding='utf-8')
  src = sources.parallel_text_source({'train': {'en': str(tmp_path / 'a.en'),
                                                'de': str(tmp_path / 'b.de')}}, 'test')
  assert src.scan_report['train']['skipped_empty'] == 2
  assert src.scan_report['train']['first_empty'] == [11, 21]
  rows = list(src.get_dataset('train', shuffle=False).as_numpy_iterator())
  assert len(rows) == 48
  kept = [i for i in range(50) if i not in (10, 20)]
  assert [r['de'].decode() for r in rows] == [de[i].strip() for i in kept]  # still aligned
  assert [r['en'].decode() for r in rows] == [en[i].strip() for i in kept]
  (tmp_path / 'c.de').write_bytes('\n'.join(de[:30]).encode() + b'\nbad \xff byte\n' +
                                  '\n'.join(de[31:]).encode() + b'\n')
  with pytest.raises(InputError, match=r'c\.de:31: invalid UTF-8'):
    sources.parallel_text_source({'train': {'en': str(tmp_path / 'a.en'),
                                            'de': str(tmp_path / 'c.de')}}, 'test')
  with pytest.raises(ValueError, match="unknown language code 'xx'"):
    interlinear.interlinear_task(name='t', parallel_files={'train': {
        'en': str(tmp_path / 'a.en'), 'xx': str(tmp_path / 'b.de')}}, vocabulary=vocab)


def test_bibles_align_by_verse_id_and_feed_interlinear(shared_data, vocab):
  nt = shared_data / 'mono' / 'bible_nt'
  sw = sources.read_ces_bible(str(nt / 'Swahili-NT.xml'))
  zu = sources.read_ces_bible(str(nt / 'Zulu-NT.xml'))
  assert len(sw) > 7000 and 'MAT.1.1' in sw and sw['MAT.1.1'].startswith('Yesu Kristo')
  ids, texts = sources.align_bibles({'sw': str(nt / 'Swahili-NT.xml'),
                                     'zu': str(nt / 'Zulu-NT.xml')}, 'test')
  assert len(ids) == len(set(sw) & set(zu))
  for i in (0, 1000, len(ids) - 1):
    assert texts['sw'][i] == sw[ids[i]] and texts['zu'][i] == zu[ids[i]]
  src = sources.bible_source({'sw': str(nt / 'Swahili-NT.xml'), 'zu': str(nt / 'Zulu-NT.xml')},
                             'test')
  val = list(src.get_dataset('validation', shuffle=False).as_numpy_iterator())
  assert val and all(r['verse_id'].decode().startswith('REV.') for r in val)
  assert val[0]['sw'].decode() == sw[val[0]['verse_id'].decode()]
  task = interlinear.interlinear_task(
      name='test_il_bible', bibles={'sw': str(nt / 'Swahili-NT.xml'),
                                    'zu': str(nt / 'Zulu-NT.xml')},
      vocabulary=vocab, pairs_per_document=2, sequence_length=256, tag_format=None,
      separator=' ')
  d = next(task.get_dataset({'targets': 256}, split='validation', shuffle=False)
           .as_numpy_iterator())['targets']
  first = val[0]
  expect = vocab.encode(f"{first['sw'].decode()} {first['zu'].decode()} ")
  n = min(len(expect), 255)  # a long verse pair is cut at the sequence length
  assert d[:n].tolist() == expect[:n]  # the verse in Swahili, then the same verse in Zulu


def test_tsv_source_and_vocab_command(shared_data, tmp_path, capsys):
  from tasks.__main__ import main
  wik = shared_data / 'dict' / 'wiktionary' / 'swahili.txt'
  src = sources.tsv_source({'train': [str(wik)]}, ('en', 'sw'), 'test')
  first = next(src.get_dataset('train', shuffle=False).as_numpy_iterator())
  line = wik.read_text(encoding='utf-8').splitlines()[0].split('\t')
  assert (first['en'].decode(), first['sw'].decode()) == (line[0].strip(), line[1].strip())
  rc = main(['vocab', '--output', str(tmp_path / 'sw'), '--vocab_size', '400', '--extra_ids', '10',
             '--symbols', '<sw>', 'ces:' + str(shared_data / 'mono/bible_nt/Swahili-NT.xml'),
             'tsv:' + str(wik)])
  assert rc == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out['vocab_size'] == 410
  v = vocab_lib.sentencepiece_vocabulary(out['model'], extra_ids=10)
  assert v.decode(v.encode('<sw> Yesu Kristo')) == '<sw> Yesu Kristo'


def test_show_prints_json_lines_of_an_experiment(capsys, monkeypatch):
  from tasks.__main__ import main
  rc = main(['show', 'interlinear_multi30k_en_de', '--n', '2', '--split', 'validation',
             '--gin_file', 'gin_configs/experiments/interlinear_captions.gin',
             '--gin.MODEL_DIR="/tmp/unused"', '--gin.TRAIN_STEPS=1'])
  assert rc == 0
  rows = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
  assert len(rows) == 2
  t = rows[0]['targets']
  assert t['text'].startswith('<en> ') and '<de>' in t['text'] and t['ids'][-1] == 1
  assert main(['show', 'no_such_task', '--gin_file',
               'gin_configs/experiments/interlinear_captions.gin',
               '--gin.MODEL_DIR="/tmp/unused"', '--gin.TRAIN_STEPS=1']) == 2
  assert "no task or mixture named 'no_such_task' (registered: " in capsys.readouterr().err
  # Without the gin file that builds it, no task exists yet (as in a fresh process): the line says so.
  for registry in (seqio.TaskRegistry, seqio.MixtureRegistry):
    monkeypatch.setattr(registry, '_REGISTRY', {})
  assert main(['show', 'interlinear_multi30k_en_de']) == 2
  assert capsys.readouterr().err.strip() == (
      "error: no task or mixture named 'interlinear_multi30k_en_de' (none is registered: tasks exist "
      "once the gin file that builds them is parsed, so pass the experiment's --gin_file)")
