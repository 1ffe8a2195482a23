"""Cloned languages, language schedules and mixtures, on Multi30k English from ../shared/data."""
import random

import numpy as np
import pytest
import seqio

from t5x_like import vocabulary
from tasks import cloned, lm, mixtures, schedules, vocab as vocab_lib


@pytest.fixture(scope='module')
def m30k(shared_data):
  return shared_data / 'parallel' / 'multi30k'


@pytest.fixture(scope='module')
def base(m30k):
  return vocab_lib.sentencepiece_vocabulary(train_files=[str(m30k / 'train.en')], vocab_size=2000)


def test_cloned_ids_fall_in_their_language_range_and_decode_back(base, m30k):
  V = base.vocab_size
  lines = (m30k / 'val.en').read_text(encoding='utf-8').splitlines()[:200]
  for frac in (1.0, 0.5):
    cv = cloned.ClonedVocabulary(base, num_languages=3, frac_clone=frac, seed=0)
    assert cv.vocab_size == 3 * V
    # The paper's choice of cloned ids: range(V) shuffled by random.Random(seed), pad excluded.
    ids = list(range(V))
    random.Random(0).shuffle(ids)
    expect = set(ids[:int(frac * V)]) - {0}
    assert set(np.nonzero(cv.is_cloned)[0].tolist()) == expect
    for line in lines:
      b = np.asarray(base.encode(line) + [1, 0, 0])  # eos and padding too
      for k in range(3):
        c = np.asarray(cv.encode_as(line, k) + cv.clone_ids([1, 0, 0], k).tolist())
        cloned_tok = cv.is_cloned[b]
        assert np.all(c[cloned_tok] == b[cloned_tok] + k * V)
        assert np.all((c[cloned_tok] >= k * V) & (c[cloned_tok] < (k + 1) * V))
        assert np.all(c[~cloned_tok] == b[~cloned_tok])  # anchors and pad are shared
        assert c[-1] == c[-2] == 0 and c[-3] == (1 + k * V if cv.is_cloned[1] else 1)
        assert cv.decode(c[:-3].tolist()) == base.decode(b[:-3].tolist())
        assert cv.language_of(c) == (k if cloned_tok.any() else 0)
  with pytest.raises(ValueError, match='mix languages'):
    cv.language_of([1 + V, 5 + 2 * V])


def test_vocabulary_save_load_roundtrip(base, tmp_path):
  cv = cloned.ClonedVocabulary(base, num_languages=2, frac_clone=0.5, seed=3)
  vocabulary.save_vocabulary(cv, str(tmp_path))
  back = vocab_lib.load_vocabulary(str(tmp_path))
  assert isinstance(back, cloned.ClonedVocabulary) and back == cv
  assert np.array_equal(back.is_cloned, cv.is_cloned)
  assert back.encode_as('A dog runs.', 1) == cv.encode_as('A dog runs.', 1)


def test_schedule_proportions_and_stage_switch():
  # 0.05_0.65_0.65_0.65 over 10,000 sequences: 2,500 per stage. The clone fraction of a stage is
  # Binomial(2500, p)/2500, sd <= 0.01: a tolerance of 0.04 is 4 sd.
  p = schedules.parse_schedule('0.05_0.65_0.65_0.65', 'test')
  probs = schedules.stage_probs(p, [1.0])
  langs = np.array(list(schedules.language_choices(probs, 10_000, seed=0).take(10_000)
                        .as_numpy_iterator()))
  for s, ps in enumerate(p):
    assert abs(langs[s * 2_500:(s + 1) * 2_500].mean() - ps) < 0.04
  stages = schedules.stage_of(np.arange(10_000), 4, 10_000).numpy()
  assert stages[2_499] == 0 and stages[2_500] == 1 and stages[9_999] == 3
  # Three languages: the clones share p evenly (5,000 draws: sd <= 0.0065, tolerance 0.03).
  probs3 = schedules.stage_probs([0.3], [1.0, 1.0])
  l3 = np.array(list(schedules.language_choices(probs3, None, 1).take(5_000).as_numpy_iterator()))
  assert np.allclose(np.bincount(l3) / 5_000, [0.7, 0.15, 0.15], atol=0.03)
  with pytest.raises(ValueError, match='0.1_0.9'):
    schedules.parse_schedule('0.1-0.9', 'test')


def _task(base, m30k, name, **kw):
  return cloned.cloned_lm_task(name=name, train_files=[str(m30k / 'train.en')],
                               validation_files=[str(m30k / 'val.en')], vocabulary=base,
                               sequence_length=64, shuffle_buffer_size=500, **kw)


def test_cloned_task_languages_follow_the_schedule(base, m30k):
  V = base.vocab_size
  # 25 steps x 32 = 800 sequences, two stages of 400: sd of a stage's fraction <= 0.025; tol 0.1.
  task = _task(base, m30k, 'test_cloned_sched', schedule='0.1_0.9', train_steps=25, batch_size=32)
  ds = task.get_dataset({'targets': 64}, split='train', shuffle=True, seed=0, num_epochs=None)
  exs = list(ds.take(800).as_numpy_iterator())
  langs = np.array([e['language'] for e in exs])
  assert abs(langs[:400].mean() - 0.1) < 0.1 and abs(langs[400:].mean() - 0.9) < 0.1
  for e in exs:
    t = e['targets']
    assert t.shape == (64,)
    if e['language'] == 1:
      assert np.all(t >= V)  # frac_clone 1: every token (no padding in full windows) is cloned
    else:
      assert np.all(t < V)
  # p_clone = 0.1 ("90/10"), 1000 sequences: sd 0.0095, tolerance 0.04.
  t2 = _task(base, m30k, 'test_cloned_p', p_clone=0.1)
  l2 = [e['language'] for e in t2.get_dataset({'targets': 64}, split='train', seed=0,
                                              num_epochs=None).take(1000).as_numpy_iterator()]
  assert abs(np.mean(l2) - 0.1) < 0.04


def test_same_seed_same_batches_and_converter_output(base, m30k):
  conv = seqio.DecoderFeatureConverter(pack=False)

  def batches(seed):
    # The task's seed (gin: %SEED) orders the lines and draws the languages.
    _task(base, m30k, f'test_cloned_det{seed}', p_clone=0.5, seed=seed)
    ds = seqio.get_dataset(f'test_cloned_det{seed}', {'targets': 64}, dataset_split='train',
                           shuffle=True, seed=0, feature_converter=conv).batch(8)
    return list(ds.take(3).as_numpy_iterator())

  a, b, c = batches(0), batches(0), batches(1)
  for x, y in zip(a, b):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  assert not all(np.array_equal(x['decoder_target_tokens'], z['decoder_target_tokens'])
                 for x, z in zip(a, c))
  # Full windows: inputs are the targets shifted right, every token counts, no segments.
  x = a[0]
  assert set(x) == {'decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights'}
  assert np.array_equal(x['decoder_input_tokens'][:, 1:], x['decoder_target_tokens'][:, :-1])
  assert np.all(x['decoder_input_tokens'][:, 0] == 0) and np.all(x['decoder_loss_weights'] == 1)


def test_validation_tasks_are_the_same_text_in_each_language(base, m30k):
  _task(base, m30k, 'test_cloned_val', num_languages=3, frac_clone=0.5)
  names = cloned.eval_task_names('test_cloned_val', 3)
  assert names == ['test_cloned_val_lang0', 'test_cloned_val_lang1', 'test_cloned_val_lang2']
  streams = [list(seqio.get_mixture_or_task(n).get_dataset(
      {'targets': 64}, split='validation', shuffle=False).as_numpy_iterator()) for n in names]
  assert len(streams[0]) == len(streams[1]) == len(streams[2]) > 100
  # One pass loses no token: the last, shorter window is kept.
  lines = (m30k / 'val.en').read_text(encoding='utf-8').splitlines()
  assert sum(len(e['targets']) for e in streams[0]) == sum(len(base.encode(l)) + 1 for l in lines)
  assert len(streams[0][-1]['targets']) < 64
  cv = seqio.get_mixture_or_task(names[0]).output_features['targets'].vocabulary
  V = base.vocab_size
  for e0, e1, e2 in zip(*streams):
    assert np.array_equal(e1['targets'] % V, e0['targets'])
    assert np.array_equal(e2['targets'] % V, e0['targets'])
    assert cv.language_of(e1['targets']) == 1 and cv.language_of(e2['targets']) == 2


def test_real_language_mixture_schedule_switches_tasks_at_the_stage(base, m30k):
  from tasks import lm as lm_tasks
  de_vocab = base  # one vocabulary for both: the mixture needs compatible features
  en = lm_tasks.text_lm_task(name='test_mix_en', train_files=[str(m30k / 'val.en')],
                             vocabulary=base)
  de = lm_tasks.text_lm_task(name='test_mix_de', train_files=[str(m30k / 'val.de')],
                             vocabulary=de_vocab)
  mix = mixtures.language_mixture(name='test_mix', tasks=[en, de], schedule='0_1', train_steps=5,
                                  batch_size=4, sequence_length=32)
  got = list(mix.get_dataset({'targets': 32}, split='train', shuffle=False, seed=0)
             .take(20).as_numpy_iterator())
  alone = {t.name: list(lm.concat_and_chunk(
      t.get_dataset({'targets': 32}, split='train', shuffle=False, seed=0, num_epochs=None), 32)
      .take(10).as_numpy_iterator()) for t in (en, de)}
  for i in range(10):  # stage 0 (p=0): the anchor; stage 1 (p=1): the other language
    assert np.array_equal(got[i]['targets'], alone['test_mix_en'][i]['targets'])
    assert np.array_equal(got[10 + i]['targets'], alone['test_mix_de'][i]['targets'])
  assert np.allclose(mixtures.temperature_rates([900, 100], 1.0), [0.9, 0.1])
  assert np.allclose(mixtures.temperature_rates([900, 100], 1e9), [0.5, 0.5], atol=1e-6)
  static = mixtures.language_mixture(name='test_mix_static', tasks=[en, de], temperature=2.0)
  assert isinstance(static, seqio.Mixture) and len(static.tasks) == 2
