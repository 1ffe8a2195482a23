"""t5x_like/provenance.py: a record names the commit it ran, and says when the tree differed from it."""
import subprocess

from t5x_like import provenance


def _git(repo, *args):
  return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=repo,
                        check=True, capture_output=True, text=True).stdout.strip()


def test_the_commit_is_marked_dirty_only_when_a_tracked_file_changed(tmp_path, monkeypatch):
  monkeypatch.setenv('SOURCE_COMMIT', 'not-this-one')
  _git(tmp_path, 'init', '-q')
  (tmp_path / 'a.py').write_text('x = 1\n')
  _git(tmp_path, 'add', 'a.py')
  _git(tmp_path, 'commit', '-q', '-m', 'one')
  sha = _git(tmp_path, 'rev-parse', 'HEAD')
  assert provenance.source_commit(str(tmp_path)) == sha
  (tmp_path / 'new_output.json').write_text('{}')  # untracked: results, logs
  assert provenance.source_commit(str(tmp_path)) == sha
  (tmp_path / 'a.py').write_text('x = 2\n')
  assert provenance.source_commit(str(tmp_path)) == sha + '-dirty'
  # Code installed somewhere inside another checkout (e.g. its venv) is not that checkout's commit.
  (tmp_path / 'venv' / 'site-packages').mkdir(parents=True)
  assert provenance.source_commit(str(tmp_path / 'venv' / 'site-packages')) == 'not-this-one'


def test_a_tree_without_git_names_the_commit_it_was_given(tmp_path, monkeypatch):
  monkeypatch.setenv('GIT_CEILING_DIRECTORIES', str(tmp_path.parent))  # no repository above either
  monkeypatch.setenv('SOURCE_COMMIT', 'abc123 (from the bundle)')
  assert provenance.source_commit(str(tmp_path)) == 'abc123 (from the bundle)'
  monkeypatch.delenv('SOURCE_COMMIT')
  assert provenance.source_commit(str(tmp_path)) is None


def test_a_bundle_names_its_commit_only_for_the_tree_it_was_built_from(tmp_path):
  """scripts/gpu_bundle.sh writes the commit and the tracked files' digest; the GPU suite, given a
  tree without .git, names that commit only while the tree is the same."""
  tree, bundle = tmp_path / 'tree', tmp_path / 'bundle'
  (tree / 'pkg').mkdir(parents=True)
  bundle.mkdir()
  (tree / 'pkg' / 'a.py').write_text('x = 1\n')
  (tree / 'b.gin').write_text('X = 1\n')
  files = ['b.gin', 'pkg/a.py']
  (bundle / 'source_files.txt').write_text('\n'.join(files) + '\n')
  (bundle / 'MANIFEST').write_text(
      '# wheels ..., built 2026-12-06T00:00:00Z\n# source_commit abc123\n'
      f'# source_tree {provenance.tree_digest(str(tree), files)}\n0f0f  wheels/x.whl\n')
  assert provenance.bundle_commit(str(bundle), str(tree)) == 'abc123 (from the bundle)'
  (tree / 'results.json').write_text('{}')  # a file the bundle does not list: outputs, logs
  assert provenance.bundle_commit(str(bundle), str(tree)) == 'abc123 (from the bundle)'
  (tree / 'pkg' / 'a.py').write_text('x = 2\n')
  changed = provenance.bundle_commit(str(bundle), str(tree))
  assert changed.startswith('abc123 + changes') and 'from the bundle)' not in changed
  (tree / 'pkg' / 'a.py').write_text('x = 1\n')
  (tree / 'b.gin').unlink()
  assert '+ changes' in provenance.bundle_commit(str(bundle), str(tree))
  # A bundle from before the digest: its commit cannot be vouched for.
  (bundle / 'MANIFEST').write_text('# source_commit abc123\n')
  assert '+ changes' in provenance.bundle_commit(str(bundle), str(tree))
