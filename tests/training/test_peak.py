"""Each run measures its own peak memory, in the process that trains it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from biotune.training.peak import ram_peak, reset_peaks
from biotune.training.session import Compute, RunOutcome, RunRequest, Session


def test_compute_keeps_the_largest_peak_and_writes_it():
    a = Compute.of([RunOutcome(0.5, 1, 1, 1.0, False, train_images=10, ram_peak=300, device_peak=7)])
    b = Compute(1, 1, 10, 1.0, ram_peak=500)
    total = a + b
    assert (total.ram_peak, total.device_peak, total.runs) == (500, 7, 2)
    assert total.to_dict()["ram_peak_bytes"] == 500 and total.to_dict()["device_peak_bytes"] == 7
    assert "ram_peak_bytes" not in Compute(1, 1, 1, 1.0).to_dict()  # not measured: not written


def test_a_run_reports_its_own_peak_not_the_process_high_water_mark():
    session = Session.prepare(ModelConfig(name="test_efficientnet", weights="random"),
                              DataConfig(dataset="digits", image_size=16), TrainConfig(epochs=1, batch_size=64),
                              n_folds=1, seed=0, runtime=RuntimeConfig())
    big = np.ones(600 * 2**20 // 8)  # 600 MB touched, then freed: the process's mark is above it
    del big
    before = ram_peak()
    if not reset_peaks(torch.device("cpu")):
        pytest.skip("this kernel refuses to reset the peak (/proc/self/clear_refs)")
    outcome = session.perform(RunRequest((1e-3,) * len(session.blocks), None, 0))
    assert 0 < outcome.ram_peak < before - 300 * 2**20
    assert outcome.device_peak == 0  # on the CPU the device is RAM
