"""The optimisers' learning-rate schedules."""

import ml_collections
import pytest

from nasty_jax import state as state_lib


def _optim(**fields):
  base = dict(name='sgd', learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
              nesterov=False, milestones=(2, 3), gamma=0.1, num_epochs=4,
              schedule='step', warmup_epochs=0)
  return ml_collections.ConfigDict({**base, **fields})


def test_step_schedule_drops_before_milestone_epochs():
  lr = state_lib.learning_rate_schedule(_optim(), steps_per_epoch=10)
  assert [float(lr(s)) for s in (0, 19, 20, 29, 30)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])


def test_cosine_schedule_warms_up_then_decays_to_zero():
  lr = state_lib.learning_rate_schedule(
      _optim(schedule='cosine', warmup_epochs=1), steps_per_epoch=10)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(0.05)
  assert float(lr(10)) == pytest.approx(0.1)
  # Halfway through the decay (epochs 1..4): half the peak.
  assert float(lr(25)) == pytest.approx(0.05, rel=1e-5)
  assert float(lr(40)) == pytest.approx(0.0, abs=1e-9)


def test_cosine_schedule_without_warm_up_starts_at_the_peak(monkeypatch):
  logged = []
  monkeypatch.setattr('absl.logging.info', lambda *a, **k: logged.append(a))
  lr = state_lib.learning_rate_schedule(
      _optim(schedule='cosine', warmup_epochs=0), steps_per_epoch=10)
  assert float(lr(0)) == pytest.approx(0.1)
  assert float(lr(20)) == pytest.approx(0.05, rel=1e-5)
  assert float(lr(40)) == pytest.approx(0.0, abs=1e-9)
  # No log line about an empty warm-up at every stage start.
  assert not logged


def test_unknown_schedule_names_the_valid_ones():
  with pytest.raises(ValueError, match='valid: step, cosine'):
    state_lib.learning_rate_schedule(_optim(schedule='linear'), 10)
