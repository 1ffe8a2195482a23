"""End to end through `python -m t5x_like.convert` (in-process): the demo export, the import -> train 10
steps -> export loop, and the cloned-vocabulary tokenizer."""
import os
import pathlib
import sys

import gin
import numpy as np
import torch

from t5x_like import decoding, run_dir, train, vocabulary
from t5x_like.convert import from_hf
from t5x_like.convert.__main__ import main as convert_main
from t5x_like.models import DecoderConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_dir(path, cfg, vocab, seed=0):
  """A model dir as the trainer leaves it: model.json, vocabulary/, checkpoints/0 (random params)."""
  from test_convert import init_params
  os.makedirs(path, exist_ok=True)
  run_dir.save_model_config(str(path), cfg)
  vocabulary.save_vocabulary(vocab, os.path.join(path, 'vocabulary'))
  params = init_params(cfg, seed)
  from_hf.save_checkpoint(str(path), params)
  return params


def test_demo_export_generates_the_same_text(tmp_path, small_vocab, small_text):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  cfg = DecoderConfig(vocab_size=small_vocab.vocab_size, embed_dim=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, mlp_dim=48, dtype='float32')
  params = _model_dir(tmp_path / 'run', cfg, small_vocab)
  out = str(tmp_path / 'hf')
  assert convert_main(['to-hf', '--model_dir', str(tmp_path / 'run'), '--out', out]) == 0
  model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
  tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
  lines = pathlib.Path(small_text['validation']).read_text(encoding='utf-8').splitlines()[:100]
  # The run's ids, after the id 0 that starts every training input.
  assert all(tok(l)['input_ids'] == [0] + small_vocab.encode(l) for l in lines)
  prompt = 'A man in a blue shirt'
  ids = tok(prompt, return_tensors='pt')['input_ids']
  hf_text = tok.decode(model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:],
                       skip_special_tokens=True)
  ours = np.asarray(decoding.greedy_decode(params, cfg, np.asarray([[0] + small_vocab.encode(prompt)]),
                                           max_new_tokens=10))[0]
  assert hf_text == small_vocab.decode([t for t in ours.tolist() if t > 1]) and hf_text.strip()


def test_import_train_10_steps_export(tmp_path, small_vocab, small_text):
  from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  LlamaForCausalLM(LlamaConfig(
      vocab_size=small_vocab.vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)).save_pretrained(
          tmp_path / 'hf')
  d = str(tmp_path / 'imported')
  assert convert_main(['from-hf', '--hf', str(tmp_path / 'hf'), '--out', d, '--dtype', 'float32']) == 0
  # restore_params (what train.init_params_from uses) reads the imported checkpoint.
  params, step = run_dir.load_params(d)
  assert step == 0 and params['layers']['attention']['query']['kernel'].shape == (2, 32, 4, 8)

  data_gin = tmp_path / 'data.gin'
  data_gin.write_text(f"""
train.train_data = @train/DataConfig()
DataConfig.mixture_or_task = @tasks.lm.text_lm_task()
DataConfig.task_feature_lengths = {{'targets': 32}}
tasks.lm.text_lm_task.name = 'convert_cpt_lm'
tasks.lm.text_lm_task.train_files = ['{small_text['train']}']
tasks.lm.text_lm_task.vocabulary = @sentencepiece_vocabulary()
sentencepiece_vocabulary.model_path = '{small_vocab.sentencepiece_model_file}'
TrainerConfig.log_every = 5
""")
  run = str(tmp_path / 'cpt')
  try:
    rc = train.main([f'--gin_file={d}/continue_pretraining.gin', f'--gin_file={data_gin}',
                     f"--gin.MODEL_DIR='{run}'", '--gin.TRAIN_STEPS=10', '--gin_search_paths', REPO])
  finally:
    gin.clear_config()
  assert rc == 0 and os.path.isdir(os.path.join(run, 'checkpoints', '10'))
  trained, _ = run_dir.load_params(run)
  moved = np.abs(np.asarray(trained['lm_head']['kernel']) - np.asarray(params['lm_head']['kernel']))
  assert 0 < moved.max() < 0.1  # started from the import, then trained

  out = str(tmp_path / 'hf_again')
  assert convert_main(['to-hf', '--model_dir', run, '--out', out]) == 0
  model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
  assert model.config.num_key_value_heads == 2
  # The exported weights are the trained step's, written one parameter at a time.
  np.testing.assert_array_equal(model.lm_head.weight.detach().numpy(),
                                np.asarray(trained['lm_head']['kernel']).T)
  # A step that is not there: refused by name before anything is written.
  missing = str(tmp_path / 'hf_step_7')
  assert convert_main(['to-hf', '--model_dir', run, '--step', '7', '--out', missing]) == 2
  assert not os.path.exists(missing)


def test_cloned_vocabulary_tokenizer(tmp_path, small_vocab):
  from transformers import AutoTokenizer
  from t5x_like.convert import tokenizer
  from tasks import cloned
  cv = cloned.ClonedVocabulary(small_vocab, num_languages=3, frac_clone=0.5, seed=0)
  vocabulary.save_vocabulary(cv, str(tmp_path / 'vocab'))
  out = tmp_path / 'hf'
  out.mkdir()
  tokenizer.write_hf_tokenizer(str(tmp_path / 'vocab'), str(out), family='decoder',
                               model_vocab_size=cv.vocab_size)
  tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
  v = small_vocab.vocab_size
  assert len(tok) == 3 * v == cv.vocab_size
  pieces = tok.convert_ids_to_tokens(list(range(3 * v)))
  assert len(set(pieces)) == 3 * v  # every id its own string
  sys.path.insert(0, str(out))
  try:
    import cloned_language
  finally:
    sys.path.remove(str(out))
  text = 'A little girl climbing into a wooden playhouse.'
  for k in range(3):
    ids = cloned_language.encode_as_language(tok, text, k)
    assert ids == [0] + cv.encode_as(text, k)  # the training-time start token first
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert {l for l in cloned_language.language_of(tok, ids) if l is not None} <= {k}
  assert '⟦2⟧' in ''.join(tok.convert_ids_to_tokens(cloned_language.encode_as_language(tok, text, 2)))


def test_from_hf_gin_survives_quotes_and_backslashes_in_paths(tmp_path, small_vocab):
  """Issue 12: the paths written into continue_pretraining.gin are string literals gin reads back."""
  import shutil
  from test_convert import _hf_llama
  import tasks  # noqa: F401  (the gin file names sentencepiece_vocabulary)
  hf = tmp_path / 'hf'
  _hf_llama(hf)
  shutil.copyfile(small_vocab.sentencepiece_model_file, hf / 'tokenizer.model')
  out = tmp_path / "it's a \\ dir" / 'imported'
  assert convert_main(['from-hf', '--hf', str(hf), '--out', str(out)]) == 0
  gin_file = out / 'continue_pretraining.gin'
  try:
    gin.add_config_file_search_path(REPO)
    gin.parse_config_file(str(gin_file))
    assert gin.query_parameter('train.init_params_from') == str(out)
    assert gin.query_parameter('sentencepiece_vocabulary.model_path') == str(out / 'vocabulary' / 'spm.model')
  finally:
    gin.clear_config()
  assert os.path.exists(str(out / 'vocabulary' / 'spm.model'))
