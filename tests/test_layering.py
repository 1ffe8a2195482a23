"""The import rules the project keeps (README, developers' guide): lower layers never import upper
ones, and a module imports at its top, except for an optional heavy backend, which it may import
where it is used. Read from the source with `ast`, so a new module is checked without being listed."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ('t5x_like', 'tasks', 'launch')

# Backends a module may import inside a function: TensorFlow and seqio (and `tasks`, which brings
# them), torch/transformers, matplotlib, Beam, the TPU runtime, and the data module's two input paths
# (each imports one of the above). A run that does not use one must not pay for, or need, it.
LAZY_BACKENDS = ('tensorflow', 'tensorflow_datasets', 'seqio', 'tasks', 'transformers', 'tokenizers',
                 'torch', 'matplotlib', 'apache_beam', 'sacrebleu', 'libtpu', 't5x_like.data_seqio',
                 't5x_like.data_grain')
# tasks.__main__ <-> tasks.beam_cache: the Beam workers rebuild the tasks from gin through __main__.
LAZY_CYCLES = {('tasks/beam_cache.py', 'tasks.__main__')}

# The library's entry points; the modules below them (models, data, checkpointing, trainer, ...) never
# import these, launch/ or tasks/ (the train entry imports `tasks` only when a gin file names one).
ENTRY_POINTS = ('t5x_like.train', 't5x_like.eval', 't5x_like.report', 't5x_like.convert.__main__')


def _modules():
  for pkg in PACKAGES:
    for path in sorted((REPO / pkg).rglob('*.py')):
      yield str(path.relative_to(REPO)), ast.parse(path.read_text(), filename=str(path))


def _imported(node, path):
  """The absolute module names an Import/ImportFrom node reads."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  base = node.module or ''
  if node.level:
    pkg = path.rsplit('/', node.level)[0].replace('/', '.')
    base = f'{pkg}.{base}' if base else pkg
  return [f'{base}.{a.name}' for a in node.names] + [base]


def _under(name, prefixes):
  return any(name == p or name.startswith(p + '.') for p in prefixes)


def _function_level_imports(tree):
  for fn in ast.walk(tree):
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for node in ast.walk(fn):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          yield node


def test_modules_import_at_the_top_except_heavy_backends():
  bad = []
  for path, tree in _modules():
    for node in _function_level_imports(tree):
      names = _imported(node, path)
      if not any(_under(n, LAZY_BACKENDS) or (path, n) in LAZY_CYCLES for n in names):
        bad.append(f'{path}:{node.lineno}: {", ".join(names[:1])}')
  assert not bad, 'imports inside functions (move them to the top of the module):\n' + '\n'.join(bad)


def test_the_library_imports_no_upper_layer():
  bad = []
  for path, tree in _modules():
    if not path.startswith('t5x_like/'):
      continue
    module = path[:-3].replace('/', '.').removesuffix('.__init__')
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      for name in _imported(node, path):
        if _under(name, ('launch',)) or (_under(name, ('tasks',)) and module != 't5x_like.train'):
          bad.append(f'{path}:{node.lineno}: {name}')
        elif _under(name, ENTRY_POINTS) and module not in ENTRY_POINTS:
          bad.append(f'{path}:{node.lineno}: {name} (an entry point)')
  assert not bad, 'lower layers importing upper ones:\n' + '\n'.join(sorted(set(bad)))


def test_hugging_face_libraries_are_imported_by_one_module():
  # The `hf` extra is optional: one module imports it and turns its absence into a one-line error.
  where = sorted({path for path, tree in _modules() for node in ast.walk(tree)
                  if isinstance(node, (ast.Import, ast.ImportFrom))
                  and any(_under(n, ('transformers', 'tokenizers', 'torch')) for n in _imported(node, path))})
  assert where == ['t5x_like/convert/hf_library.py'], where


@pytest.mark.parametrize('module', ['t5x_like.report', 't5x_like.evaluation.results'])
def test_reading_results_needs_no_jax(module):
  out = subprocess.run([sys.executable, '-c', f'import sys, {module}; print(sorted(m for m in '
                        "('jax', 'flax', 'tensorflow') if m in sys.modules))"],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == '[]'
