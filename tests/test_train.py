"""Training: GradCache equals plain backprop, resume after a crash is bit-exact, cross-rank negatives work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from btoks import BToksConfig, BToksModel
from btoks.backbones.tiny import tiny_backbone
from btoks.data.examples import shapes
from btoks.train import TrainConfig, Trainer
from btoks.train.step import compute_gradients, prepare_batch

ROOT = Path(__file__).resolve().parents[1]


def test_grad_cache_equals_full_batch_gradients():
    torch.manual_seed(0)
    model = BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=4, gen_weight=2.0)).train()
    pairs = list(shapes())[:6]
    q, p = [x.query for x in pairs], [x.positive for x in pairs]
    grads = {}
    for chunk in (None, 2):
        model.zero_grad()
        batch = prepare_batch(model, q, p, chunk_size=chunk)
        assert len(batch.chunks["query"]) == (1 if chunk is None else 3)
        losses = compute_gradients(model, batch, gen_weight=2.0)
        assert losses.generative > 0
        grads[chunk] = (losses, {n: t.grad.clone() for n, t in model.named_parameters() if t.grad is not None})
    (l_full, g_full), (l_chunk, g_chunk) = grads[None], grads[2]
    assert abs(l_full.loss - l_chunk.loss) < 1e-5
    assert g_full.keys() == g_chunk.keys()
    for name in g_full:
        assert torch.allclose(g_full[name], g_chunk[name], atol=1e-5), name


def _cfg(tmp_path, **kw):
    base = dict(model="tiny:llama", examples="text", output_dir=str(tmp_path), max_steps=6, batch_size=4,
                grad_cache_chunk=2, lr=1e-2, warmup_steps=1, save_every=2, log_every=1, lora=True, lora_r=4,
                lora_alpha=8, lora_dropout=0.1, btoks={"num_btoks": 2, "gen_weight": 1.0, "gen_steps": 4})
    base.update(kw)
    return TrainConfig.from_dict(base)


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_resume_after_crash_is_bit_exact(tmp_path):
    reference = _trainable(Trainer(_cfg(tmp_path / "straight")).train())

    class Crash(RuntimeError):
        pass

    def crash_at_5(step, record):
        if step == 5:  # step 5 finished but not checkpointed: its work must be redone identically
            raise Crash

    with pytest.raises(Crash):
        Trainer(_cfg(tmp_path / "crashed")).train(on_step=crash_at_5)
    ckpts = sorted(p.name for p in (tmp_path / "crashed" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2", "checkpoint-4"]
    assert not list((tmp_path / "crashed" / "checkpoints").glob(".tmp-*"))
    (tmp_path / "crashed" / "checkpoints" / ".tmp-checkpoint-killed").mkdir()  # what kill -9 leaves behind
    (tmp_path / "crashed" / ".model.killed").mkdir()
    resumed = Trainer(_cfg(tmp_path / "crashed"))
    final = _trainable(resumed.train())
    assert not list((tmp_path / "crashed").glob(".model.*"))
    assert not list((tmp_path / "crashed" / "checkpoints").glob(".tmp-*"))
    crashed_log = [json.loads(line) for line in (tmp_path / "crashed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in crashed_log] == [1, 2, 3, 4, 5, 6]  # step 5 was logged, redone, logged once
    assert resumed.step == 6
    assert reference.keys() == final.keys()
    for name in reference:
        assert torch.equal(reference[name], final[name]), name
    logs = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["gen_weight"] for r in logs] == [1.0] * 4 + [0.0] * 2  # λ on for gen_steps, then off
    assert (tmp_path / "crashed" / "model" / "btoks_config.json").is_file()


@pytest.mark.slow
def test_two_process_training_with_accelerate(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"model: tiny:llama\nexamples: text\noutput_dir: {tmp_path / 'run'}\nmax_steps: 3\nbatch_size: 4\n"
        "grad_cache_chunk: 2\nlora: false\nlr: 0.01\nwarmup_steps: 1\nlog_every: 1\nsave_every: 3\n"
        "btoks: {num_btoks: 2, gen_weight: 1.0}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
         str(29700 + os.getpid() % 200), "-m", "btoks.cli", "train", str(cfg)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]
    assert all(r["candidates"] == 8 for r in logs)  # 2 processes × 4 pairs
    assert (tmp_path / "run" / "model" / "btoks_config.json").is_file()


def test_media_settings_reach_reader_and_backbone(tmp_path):
    """``video_frames`` sets how many frames training videos are sampled to, ``image_max_pixels`` the
    dynamic-resolution budget of the Qwen-VL image processor."""
    from PIL import Image

    clip = tmp_path / "clip"
    clip.mkdir()
    for k in range(12):
        Image.new("RGB", (32, 32), (20 * k, 0, 0)).save(clip / f"{k:03d}.png")
    rows = [{"qry": "<|video_pad|> what changes?", "qry_video_path": "clip", "pos_text": f"red level {k}"}
            for k in range(2)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp_path / "run", model="tiny:qwen2_vl", examples=None, data=[{"name": "v", "path": "train.jsonl"}],
               data_root=str(tmp_path), video_frames=5, image_max_pixels=56 * 56 * 4, batch_size=2)
    trainer = Trainer(cfg)
    assert len(trainer.data[0].query.video) == 5
    assert trainer.model.backbone.image_processor.size["longest_edge"] == 56 * 56 * 4
    with pytest.raises(ValueError, match="video_frames must be >= 1"):
        _cfg(tmp_path, video_frames=0)


def test_resume_refuses_a_different_configuration(tmp_path):
    from btoks.train.rundir import ConfigMismatchError

    Trainer(_cfg(tmp_path, max_steps=2)).train()
    with pytest.raises(ConfigMismatchError, match=r"btoks.num_btoks 2 → 3.*--no-resume.*--output-dir"):
        Trainer(_cfg(tmp_path, max_steps=2, btoks={"num_btoks": 3, "gen_weight": 1.0, "gen_steps": 4})).train()
    with pytest.raises(ConfigMismatchError, match=r"lr 0.01 → 0.02"):
        Trainer(_cfg(tmp_path, max_steps=2, lr=2e-2)).train()
    Trainer(_cfg(tmp_path, max_steps=2, log_every=2, save_every=1)).train()  # bookkeeping may change
    recorded = json.loads((tmp_path / "train_config.json").read_text())
    assert recorded["lr"] == 1e-2 and recorded["fingerprint"]
    fresh = Trainer(_cfg(tmp_path, max_steps=2, lr=2e-2, resume=False))  # start fresh: old run removed
    fresh.train()
    assert fresh.step == 2 and json.loads((tmp_path / "train_config.json").read_text())["lr"] == 2e-2
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]


@pytest.mark.parametrize(("override", "message"), [
    ("lr=-1", "lr must be > 0"), ("lora=maybe", "lora must be true or false"),
    ("seed=1e3", "seed must be an integer"), ("lora_dropout=1.5", "lora_dropout must be in"),
    ("btoks.num_btoks=[", "invalid value"),
])
def test_config_values_are_validated(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_yaml("configs/tiny.yaml", [override])


def test_yaml_syntax_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny:llama\n  lr: [1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: invalid YAML \(.* at line 2, column 5\)$"):
        TrainConfig.from_yaml(bad)


def test_presets_never_write_into_the_quickstart_folders():
    """`btoks train mini-quick btoks.gen_weight=1` must not resume into (and replace) the quickstart's model."""
    import yaml

    from btoks.quickstart import ARMS
    from btoks.train.config import preset_path

    for name, quickstart_out in (("mini-quick", "runs/quickstart"), ("mini-full", "runs/quickstart-full")):
        out = Path(yaml.safe_load(preset_path(name).read_text())["output_dir"])
        assert not out.is_relative_to(quickstart_out), (name, out)
        assert all(out != Path(quickstart_out, arm.name) for arm in ARMS)


def test_settings_added_since_a_run_was_recorded_do_not_block_its_resume(tmp_path):
    from btoks.train.rundir import ConfigMismatchError, check_same_run, prepare

    cfg = _cfg(tmp_path).to_dict()
    prepare(tmp_path, cfg, resume=True)
    check_same_run(tmp_path, {**cfg, "a_setting_added_later": 3})  # the record predates it: same run
    with pytest.raises(ConfigMismatchError, match=r"seed 42 → 7"):
        check_same_run(tmp_path, {**cfg, "seed": 7})


def test_auto_dtype_is_bf16_only_where_the_hardware_multiplies_it(monkeypatch) -> None:
    from btoks.train.trainer import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for avx512_bf16, amx, want in ((False, False, torch.float32), (True, False, torch.bfloat16),
                                   (False, True, torch.bfloat16)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_dtype("auto") is want
    assert resolve_dtype("float16") is torch.float16
    with pytest.raises(ValueError, match="dtype must be"):
        TrainConfig(dtype="half", data_root=None, examples="shapes")


def test_a_finished_run_is_the_same_run_for_a_fresh_config(tmp_path):
    """Building the model fills in btoks.base_model / backbone, and the checkpoint records that: a re-run with the
    same settings (a resumed quickstart) must still recognise its finished run."""
    from btoks.train.rundir import check_same_run

    Trainer(_cfg(tmp_path, max_steps=2)).train()
    recorded = json.loads(next((tmp_path / "checkpoints").glob("checkpoint-*/trainer.json")).read_text())
    assert recorded["config"]["btoks"]["base_model"]  # the model did fill it in
    check_same_run(tmp_path, _cfg(tmp_path, max_steps=2).to_dict())


def test_quickstart_arms_trained_at_once_match_one_after_the_other(tmp_path):
    """`--jobs 2` trains the two arms in two spawned processes; each must train exactly as it does alone."""
    from btoks.quickstart import ARMS, train_arm, train_arms_together

    preset = tmp_path / "preset.yaml"
    preset.write_text("model: tiny:llama\nexamples: text\nmax_steps: 3\nbatch_size: 4\ngrad_cache_chunk: null\n"
                      "lora: false\nlr: 0.01\nwarmup_steps: 1\nlog_every: 1\nsave_every: 3\nseed: 0\n"
                      "btoks: {num_btoks: 2, gen_weight: 1.0}\n")
    seconds = train_arms_together(str(preset), ARMS, tmp_path / "together", tmp_path, [], jobs=2)
    assert set(seconds) == {a.name for a in ARMS} and all(s > 0 for s in seconds.values())
    for arm in ARMS:
        train_arm(str(preset), arm, tmp_path / "alone", tmp_path, [], progress=False)

        def log(run: Path, arm=arm) -> list[float]:
            rows = [json.loads(line) for line in (run / arm.name / "log.jsonl").read_text().splitlines()]
            return [r[k] for r in rows for k in ("contrastive", "generative")]

        together, alone = log(tmp_path / "together"), log(tmp_path / "alone")
        assert len(together) == 6 and together == pytest.approx(alone, rel=1e-4, abs=1e-5), arm.name
        assert (tmp_path / "together" / arm.name / "model" / "btoks_config.json").is_file()

    broken = tmp_path / "broken.yaml"  # an error inside a child names the arm instead of hanging the parent
    broken.write_text(preset.read_text().replace("examples: text", "examples: no-such-examples"))
    with pytest.raises(RuntimeError, match=r"training (lasttoken|btoks) failed(.|\n)*unknown example set"):
        train_arms_together(str(broken), ARMS, tmp_path / "broken", tmp_path, [], jobs=2)
