"""Resuming a run (track2view/training/resume.py): changed settings refused with one line (or applied and said),
`--ckpt_path last` with nothing to resume, unreadable or unsafe checkpoint files, one run per root."""

import pickle

import pytest
import torch

import train
from test_training import STEPS, fit, make_config, shards  # noqa: F401  (shards: the module's fixture)


def one_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture()
def finished_run(tmp_path, tiny_wan_dir, shards):  # noqa: F811
    config, root = make_config(tmp_path / "c.yaml"), tmp_path / "run"
    assert fit(config, root, tiny_wan_dir, shards) == 0
    return config, root


def test_ckpt_path_last_with_nothing_to_resume_stops_and_last_or_new_starts(tmp_path, tiny_wan_dir, shards,  # noqa: F811
                                                                           capsys):
    config, root = make_config(tmp_path / "c.yaml"), tmp_path / "run"
    assert fit(config, root, tiny_wan_dir, shards, "--ckpt_path", "last") == 2
    assert "no checkpoint to resume" in one_error(capsys)
    assert not (root / "checkpoints").exists()
    assert fit(config, root, tiny_wan_dir, shards, "--ckpt_path", "last_or_new") == 0
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert fit(config, root, tiny_wan_dir, shards, "--ckpt_path", "last_or_new") == 0  # now it resumes


@pytest.mark.parametrize("override, needle", [(["--model.lr", "1e-6"], "model.lr: checkpoint 0.001, now 1e-06"),
                                              (["--model.lora_rank", "4"], "model.lora_rank: checkpoint 8, now 4"),
                                              (["--model.conditioning", "camera", "--model.conditioning_config",
                                                "null"], "model.conditioning: checkpoint 'tracks', now 'camera'")])
@pytest.mark.parametrize("ckpt", ["last", "path"])
def test_a_resume_with_changed_settings_is_refused_with_one_line(finished_run, tiny_wan_dir, shards, capsys,  # noqa: F811
                                                                 override, needle, ckpt):
    config, root = finished_run
    path = "last" if ckpt == "last" else str(root / "checkpoints" / "last.ckpt")
    before = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    rc = fit(config, root, tiny_wan_dir, shards, "--ckpt_path", path, "--trainer.max_steps", str(STEPS + 2), *override)
    assert rc == 2
    assert needle in one_error(capsys)
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == before


def test_a_speed_setting_change_applies_and_is_said(finished_run, tiny_wan_dir, shards):  # noqa: F811
    config, root = finished_run
    with pytest.warns(UserWarning, match="resuming with model.gradient_checkpointing='selective'"):
        rc = fit(config, root, tiny_wan_dir, shards, "--ckpt_path", "last", "--trainer.max_steps", str(STEPS + 1),
                 "--model.gradient_checkpointing", "selective")
    assert rc == 0
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS + 1


class Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['T2V_MARKER'], 'w').write('ran')",))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "pickle payload"])
def test_unreadable_or_unsafe_checkpoint_files_give_one_line(finished_run, tiny_wan_dir, shards, capsys,  # noqa: F811
                                                             tmp_path, monkeypatch, kind):
    config, root = finished_run
    marker = tmp_path / "marker"
    monkeypatch.setenv("T2V_MARKER", str(marker))
    bad = tmp_path / "bad.ckpt"
    if kind == "garbage":
        bad.write_bytes(b"not a checkpoint" * 100)
    elif kind == "truncated":
        data = (root / "checkpoints" / "last.ckpt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"state_dict": {}, "hyper_parameters": {}, "x": Payload()}, bad, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    assert fit(config, tmp_path / "other", tiny_wan_dir, shards, "--ckpt_path", str(bad)) == 2
    assert "cannot read checkpoint" in one_error(capsys)
    assert not marker.exists()  # the payload never ran


def test_two_runs_in_one_root_are_refused(tmp_path, tiny_wan_dir, shards, capsys):  # noqa: F811
    from track2view.training.resume import RunLock

    root = tmp_path / "run"
    held = RunLock(root)  # another run of this root, alive
    try:
        assert fit(make_config(tmp_path / "c.yaml"), root, tiny_wan_dir, shards) == 2
        assert "another training run holds" in one_error(capsys)
        assert not (root / "checkpoints").exists()
    finally:
        held.release()
    assert fit(make_config(tmp_path / "c.yaml"), root, tiny_wan_dir, shards) == 0  # free again
