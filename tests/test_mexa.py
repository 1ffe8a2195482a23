"""MEXA on constructed embeddings with known answers, on FLORES-200 (read from its tar), and through a
model's hidden states."""
import numpy as np
import pytest

from t5x_like.evaluation import mexa, text_sources


def test_identical_sets_score_one():
  e = np.random.default_rng(0).normal(size=(100, 32))
  assert mexa.mexa_score(e, e) == 1.0


def test_shuffled_set_scores_its_fixed_points_near_chance():
  rng = np.random.default_rng(1)
  e = rng.normal(size=(100, 32))
  perm = rng.permutation(100)
  # Row i's partner now sits elsewhere: only fixed points of the permutation can count.
  score = mexa.mexa_score(e, e[perm])
  assert score == np.mean(perm == np.arange(100))
  assert score <= 0.05


def test_independent_random_sets_are_near_chance():
  rng = np.random.default_rng(2)
  scores = [mexa.mexa_score(rng.normal(size=(100, 64)), rng.normal(size=(100, 64)))
            for _ in range(5)]
  assert np.mean(scores) < 0.05  # chance is about 1/n = 0.01


def test_ties_do_not_count():
  rng = np.random.default_rng(3)
  e = rng.normal(size=(10, 8))
  e[1] = e[0]  # sentences 0 and 1 embed identically: neither partner is a STRICT nearest neighbour
  assert mexa.mexa_score(e, e) == pytest.approx(0.8)
  same = np.ones((5, 4))
  assert mexa.mexa_score(same, same) == 0.0


def test_row_and_column_must_both_hold():
  pivot = np.array([[1.0, 0.0], [0.8, 0.6]])
  target = np.array([[1.0, 0.0], [1.0, 0.05]])
  # Row 1 is fine (S11 > S10), but column 1 is won by pivot 0 (S01 > S11): only sentence 0 counts.
  s = pivot @ target.T / np.outer(np.linalg.norm(pivot, axis=1), np.linalg.norm(target, axis=1))
  assert s[1, 1] > s[1, 0] and s[0, 1] > s[1, 1]
  assert mexa.mexa_score(pivot, target) == 0.5


def test_pooling_weighted_and_last_token():
  h = np.arange(2 * 3 * 4 * 2, dtype=np.float64).reshape(2, 3, 4, 2)  # [L1, B, T, D]
  lengths = np.array([4, 2, 1])
  w = mexa.pool(h, lengths, 'weighted')
  # sentence 1 has 2 tokens: (1 * h_1 + 2 * h_2) / 3
  np.testing.assert_allclose(w[:, 1], (1 * h[:, 1, 0] + 2 * h[:, 1, 1]) / 3)
  np.testing.assert_allclose(w[:, 2], h[:, 2, 0])
  last = mexa.pool(h, lengths, 'lasttoken')
  np.testing.assert_allclose(last[:, 0], h[:, 0, 3])
  np.testing.assert_allclose(last[:, 1], h[:, 1, 1])


def _char_ngrams(lines, dim=4096, n=3):
  """A model-free sentence embedding: hashed character trigram counts (stable across runs)."""
  import zlib
  out = np.zeros((len(lines), dim))
  for i, l in enumerate(lines):
    s = f' {l.lower()} '
    for j in range(len(s) - n + 1):
      out[i, zlib.crc32(s[j:j + n].encode()) % dim] += 1
  return out


def test_flores_from_the_tar(shared_data):
  tar = shared_data / 'eval' / 'flores200_devtest_20langs.tar.gz'
  eng = text_sources.read_lines('flores:eng_Latn', str(tar))
  deu = text_sources.read_lines('flores:deu_Latn', str(tar))
  assert len(eng) == len(deu) == 1012
  e, d = _char_ngrams(eng[:100]), _char_ngrams(deu[:100])
  assert mexa.mexa_score(e, e) == 1.0
  # English and German share names, numbers and cognates: trigrams retrieve many translations...
  en_de = mexa.mexa_score(e, d)
  assert en_de > 0.3
  # ...and none once the German side is shuffled.
  perm = np.random.default_rng(0).permutation(100)
  assert mexa.mexa_score(e, d[perm]) <= np.mean(perm == np.arange(100)) + 0.03
  # Different script, no shared characters beyond digits/punctuation: far less retrieval.
  zho = text_sources.read_lines('flores:zho_Hans', str(tar), limit=100)
  assert mexa.mexa_score(e, _char_ngrams(zho)) < en_de


def test_unknown_flores_language_names_the_available_ones(shared_data):
  tar = shared_data / 'eval' / 'flores200_devtest_20langs.tar.gz'
  with pytest.raises(ValueError, match='eng_Latn'):
    text_sources.read_flores('xxx_Latn', str(tar))
