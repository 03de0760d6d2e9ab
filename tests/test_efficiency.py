"""The reproduction's FLOP floor: FLOPs per step and per run, and the core-seconds it is compared with."""

from omegaconf import OmegaConf

from bnlab.config import ModelConfig, NormConfig
from bnlab.efficiency import STEP_OVERHEAD_FLOPS, core_seconds, expected_cost, run_flops, step_flops
from bnlab.train import train
from tests.conftest import make_cfg


def test_a_training_step_counts_forward_and_the_backward_products_it_needs():
    """784-100-10, batch b: forward 2b(784*100 + 100*10); backward each weight's gradient (the same again) and the
    input gradient of every layer but the first (the images need none): 2b*100*10."""
    model = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"depth": 1, "width": 100})
    norm = OmegaConf.structured(NormConfig)
    b, forward = 32, 2 * 32 * (784 * 100 + 100 * 10)
    assert step_flops(model, norm, (1, 28, 28), 10, b) == 2 * forward + 2 * b * 100 * 10
    assert step_flops(model, norm, (1, 28, 28), 10, 1, backward=False) == forward / b


def test_a_runs_flops_are_its_steps_and_its_evaluations(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, ["data=gaussian_linear", "trainer.loss=mse", "model.depth=1",
                                         "model.width=8", "norm=batch"])
    train(cfg, str(tmp_path / "run"))
    training, evaluation = run_flops(tmp_path / "run")
    step = step_flops(cfg.model, cfg.norm, (10,), 10, 60, "mse")
    example = step_flops(cfg.model, cfg.norm, (10,), 10, 1, "mse", backward=False)
    assert training == 30 * step
    assert evaluation == 4 * 1000 * example  # evaluations at steps 0, 10, 20, 30 of the 1,000 samples
    # what a sweep's time left expects of it, from the config alone: the same FLOPs and a fixed cost per step
    assert expected_cost(cfg) == training + evaluation + 30 * STEP_OVERHEAD_FLOPS


def test_core_seconds_are_the_last_reproductions_sweep_times(tmp_path):
    log = tmp_path / "timing_cpu.log"
    log.write_text("[bnlab] make reproduce on A, 2 sweeps at a time, one thread each\n[bnlab] fig1: 500 s\n"
                   "[bnlab] all sweeps, 2 at a time: 600 s\n"
                   "[bnlab] make reproduce on B, 2 sweeps at a time, one thread each\n[bnlab] fig1: 7 s\n"
                   "[bnlab] lr_sweep_mlp: 57 s\n[bnlab] all sweeps, 2 at a time: 60 s\n")
    assert core_seconds(log) == 64
