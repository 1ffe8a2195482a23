"""t5x_like.vocabulary (no TensorFlow) gives the ids and text of seqio's vocabularies, for a saved
run vocabulary with extra ids and for a cloned one."""
import pathlib

import numpy as np

from t5x_like import vocabulary


def test_tf_free_vocabularies_match_seqio_and_the_cloned_vocabulary(small_text, tmp_path):
  from tasks import cloned, vocab
  seqio_vocab = vocab.sentencepiece_vocabulary(train_files=[small_text['train']], vocab_size=500,
                                               extra_ids=3, cache_dir=str(tmp_path / 'spm'))
  lines = pathlib.Path(small_text['validation']).read_text(encoding='utf-8').splitlines()[:50]
  for name, theirs in (('plain', seqio_vocab),
                       ('cloned', cloned.ClonedVocabulary(seqio_vocab, num_languages=3,
                                                          frac_clone=0.4, seed=7))):
    vocabulary.save_vocabulary(theirs, str(tmp_path / name))
    mine = vocabulary.load_vocabulary(str(tmp_path / name))
    assert mine.vocab_size == theirs.vocab_size and mine.eos_id == theirs.eos_id
    for line in lines:
      ids = list(theirs.encode(line))
      assert mine.encode(line) == ids
      # sentinels, an out-of-range id and text after EOS are decoded as seqio does
      odd = ids + [theirs.vocab_size - 1, theirs.vocab_size + 5, 1] + ids[:3]
      assert mine.decode(odd) == theirs.decode(odd)
    if name == 'cloned':
      np.testing.assert_array_equal(mine.is_cloned, theirs.is_cloned)
      for k in range(3):
        assert mine.encode_as(lines[0], k) == theirs.encode_as(lines[0], k)
        assert mine.decode(mine.encode_as(lines[0], k)) == theirs.decode(
            theirs.encode_as(lines[0], k))
      assert mine.language_of(mine.encode_as(lines[1], 2)) == 2
