"""A user registers methods from a file of their own; the main command runs
them through the pipeline and their results reach results.json/.md."""

import json
import subprocess
import sys
import textwrap

import pytest

from nasty_jax import methods

REPO = __file__.rsplit('/tests/', 1)[0]

# What a user writes: a student-side loss (reverse-KL KD) and a teacher-side
# one (CE plus a confidence penalty), one registration each.
EXTENSION = textwrap.dedent('''
    import jax
    from nasty_jax import losses
    from nasty_jax import methods


    def reverse_kd(fields):
      tau, alpha = float(fields.temperature), float(fields.alpha)

      def objective(out):
        teacher = jax.lax.stop_gradient(out.frozen['teacher'])
        # KL(student || teacher): the student's softmax is the target.
        kl = losses.kd_kl(teacher, out.logits, tau)
        ce = losses.cross_entropy(out.logits, out.labels)
        return alpha * kl + (1 - alpha) * ce, {'ce': ce, 'kl': kl}

      return objective


    def confident(fields):
      beta = float(fields.beta)

      def objective(out):
        ce = losses.cross_entropy(out.logits, out.labels)
        p = jax.nn.softmax(out.logits)
        entropy = -(p * jax.nn.log_softmax(out.logits)).sum(-1).mean()
        return ce + beta * entropy, {'ce': ce, 'entropy': entropy}

      return objective


    methods.register(methods.Method(
        'rkd', methods.STUDENT, reverse_kd,
        defaults=dict(temperature=4.0, alpha=0.9), frozen=('teacher',),
        label='reverse KD'))
    methods.register(methods.Method(
        'confident', methods.TEACHER, confident, defaults=dict(beta=0.5),
        label='confident'))
''')


@pytest.fixture(name='extension')
def _extension(tmp_path):
  path = tmp_path / 'my_methods.py'
  path.write_text(EXTENSION)
  yield str(path)
  for name in ('rkd', 'confident'):
    methods._REGISTRY.pop(name, None)  # pylint: disable=protected-access


def test_the_main_command_runs_user_methods(extension, tmp_path):
  workdir = tmp_path / 'run'
  arg = (f'_tiny_resnet,runlocal,extensions={extension},'
         'teachers=normal+confident,students.methods=ce+kd+rkd,'
         'students.archs=_tiny_cnn,confident.beta=0.25')
  proc = subprocess.run(
      [sys.executable, '-m', 'nasty_jax.main',
       f'--config=configs/digits.py:{arg}', f'--workdir={workdir}',
       '--config.num_devices=1'],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert set(results['teachers']) == {'normal', 'confident'}
  assert set(results['students']['_tiny_cnn']) == {
      'baseline', 'kd_normal', 'kd_confident', 'rkd_normal', 'rkd_confident'}
  for entry in results['students']['_tiny_cnn'].values():
    assert 0 <= entry['best'] <= 100
  assert results['stages']['rkd_confident/_tiny_cnn']['mode'] == 'rkd'
  assert results['config']['confident']['beta'] == 0.25
  markdown = (workdir / 'results.md').read_text()
  assert '_tiny_resnet (confident)' in markdown
  assert '### Students by reverse KD' in markdown
  # Its logged terms are its own.
  log = proc.stderr
  assert 'entropy' in log


def test_a_bad_extension_is_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match="Cannot load extension 'nope_xyz'"):
    methods.load_extensions('nope_xyz')
  broken = tmp_path / 'broken.py'
  broken.write_text('raise RuntimeError("typo in my loss")\n')
  with pytest.raises(ValueError, match='typo in my loss'):
    methods.load_extensions(str(broken))


def test_registry_refuses_clashes():
  with pytest.raises(ValueError, match='already registered'):
    methods.register(methods.Method('kd', methods.STUDENT,
                                    lambda f: None))
  with pytest.raises(ValueError, match="name its stages like 'ce'"):
    methods.register(methods.Method('ce2', methods.STUDENT, lambda f: None,
                                    stage='baseline'))
  with pytest.raises(ValueError, match='exactly one of'):
    methods.Method('x', methods.STUDENT)
  with pytest.raises(ValueError, match='Unknown method'):
    methods.get('nope')
