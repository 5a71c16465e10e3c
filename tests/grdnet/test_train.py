"""A short real GRD-Net training run on tiny images: loss goes down, checkpoints resume, CLI eval/predict work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from linecam.commands.model import cmd_eval, cmd_predict, cmd_train, register
from linecam.grdnet.modeldir import load_model_dir, read_card
from linecam.grdnet.train import (
    CHECKPOINT_LAST,
    COSINE_FLOOR,
    TRAINING_SUBDIR,
    TrainConfig,
    Trainer,
    cosine_factor,
    run_training,
)
from tests.grdnet.builders import TINY, make_vial_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vial_dataset(tmp_path_factory.mktemp("vials"))


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {"data": data, "out": out, "profile": "fast", "profile_overrides": TINY,
                               "batch_size": 4, "lr": 2e-3, "seed": 3, "progress": False, "rotation": 0.0,
                               "precision": "fp32"}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_training_lowers_loss_and_writes_loadable_model(dataset: Path, tmp_path: Path) -> None:
    cfg = _cfg(dataset, tmp_path / "model", epochs=6, max_steps_per_epoch=3, rotation=math.pi / 2)
    out = run_training(cfg)
    assert out == cfg.out
    hist = json.loads((cfg.out / TRAINING_SUBDIR / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5, 6]
    # The reconstruction (contextual) loss of the generator falls clearly from its random start.
    assert hist[-1]["train_g_con"] < 0.8 * hist[0]["train_g_con"], [h["train_g_con"] for h in hist]
    assert all(math.isfinite(h["val_loss"]) for h in hist)
    assert (cfg.out / TRAINING_SUBDIR / "loss_curves.png").stat().st_size > 1000
    assert (cfg.out / TRAINING_SUBDIR / CHECKPOINT_LAST).is_file()
    model, card = load_model_dir(cfg.out)
    assert card.roi_variant == "learned_silence" and card.profile.image_size == 32
    assert card.training["train"]["images"] + card.training["held_out_val"]["images"] == 12
    assert "val_loss" in card.training["val_metrics"]
    with torch.no_grad():
        prob = model(torch.rand(2, 3, 32, 32))
    assert prob.shape == (2, 1, 32, 32) and 0.0 <= float(prob.min()) <= float(prob.max()) <= 1.0


def test_resume_continues_from_checkpoint_epoch(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    first = Trainer(_cfg(dataset, out, epochs=1, max_steps_per_epoch=2, perlin_scales=(3, 5)))
    assert (first.simulator.min_scale_exp, first.simulator.max_scale_exp) == (3, 5)
    first.fit()
    ck = torch.load(out / TRAINING_SUBDIR / CHECKPOINT_LAST, weights_only=False)
    assert ck["epoch"] == 1
    resumed = Trainer(_cfg(dataset, out, epochs=2, max_steps_per_epoch=2, perlin_scales=(3, 5)))
    assert resumed.resume() == 1
    # Weights, optimiser state and history came back from the checkpoint, not from a fresh init.
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.opt_g.state_dict()["state"], "optimizer moments restored"
    assert len(resumed.history) == 1
    resumed.fit()
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert torch.load(out / TRAINING_SUBDIR / CHECKPOINT_LAST, weights_only=False)["epoch"] == 2
    other = Trainer(_cfg(dataset, out, epochs=2, profile_overrides={**TINY, "latent_channels": 4}))
    with pytest.raises(RuntimeError, match="profile differs"):
        other.resume()


def test_cli_train_eval_predict(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    model_dir = tmp_path / "m"
    rc = cmd_train(parser.parse_args(["train", "--data", str(dataset), "--out", str(model_dir), "--image-size", "32",
                                      "--epochs", "1", "--batch-size", "4", "--max-steps-per-epoch", "2",
                                      "--no-progress", "--name", "vials", "--version", "7", "--focal-gamma", "0.5",
                                      "--perlin-scales", "3", "5", "--profile-set", "gen_widths=[16,32]",
                                      "--lr-schedule", "cosine", "--shape-families", "perlin,thin,cluster"]))
    assert rc == 0
    assert read_card(model_dir).command.startswith("linecam ")
    assert read_card(model_dir).training["shape_families"] == ["perlin", "thin", "cluster"]
    training = read_card(model_dir).training
    assert training["focal_gamma"] == 0.5 and training["perlin_scales"] == [3, 5]
    assert training["lr_schedule"] == "cosine" and training["unet_prior"] == 0.01
    assert read_card(model_dir).profile.gen_widths == (16, 32)
    metrics_json = tmp_path / "metrics.json"
    card_before = (model_dir / "card.json").read_bytes()
    rc = cmd_eval(parser.parse_args(["eval", "--model", str(model_dir), "--data", str(dataset), "--json",
                                     str(metrics_json), "--report", str(tmp_path / "report"), "--precision", "fp32"]))
    assert rc == 0
    assert (model_dir / "card.json").read_bytes() == card_before  # evaluation is read-only by default
    assert "card.json unchanged (threshold none)" in capsys.readouterr().out
    rc = cmd_eval(parser.parse_args(["eval", "--model", str(model_dir), "--data", str(dataset), "--json",
                                     str(metrics_json), "--precision", "fp32", "--store"]))
    assert rc == 0
    m = json.loads(metrics_json.read_text())
    assert f"threshold none -> {m['threshold']:.5f}" in capsys.readouterr().out  # says what it changed
    for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "outside_roi_false_reject_rate"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["n_test"] == 9 and m["n_outside_roi"] == 3 and m["calibration_split"] == "val"
    assert "image_auroc" in m["unseen"]
    card = read_card(model_dir)
    assert card.threshold == pytest.approx(m["threshold"])
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("<img") >= 3
    # the training run's per-epoch curves travel with the report
    assert "src='training_curves.png'" in page
    assert (tmp_path / "report" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    cases = sorted(p.name for p in (tmp_path / "report" / "cases").glob("*.png"))
    assert len(cases) >= 2
    # A second report into the same folder replaces the first one's panels instead of mixing with them.
    (tmp_path / "report" / "cases" / "07_good_9999.png").write_bytes(b"stale")
    (tmp_path / "report" / "cases" / "notes.png").write_bytes(b"user file")
    rc = cmd_eval(parser.parse_args(["eval", "--model", str(model_dir), "--data", str(dataset), "--json",
                                     str(metrics_json), "--report", str(tmp_path / "report"), "--precision", "fp32"]))
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "report" / "cases").glob("*.png")) == sorted([*cases, "notes.png"])
    load_model_dir(model_dir)  # card rewritten, hashes still valid
    images = sorted((dataset / "test" / "spot").glob("*.png"))[:2]
    pred_json = tmp_path / "pred.json"
    rc = cmd_predict(parser.parse_args(["predict", "--model", str(model_dir), "--json", str(pred_json),
                                        "--heatmaps", str(tmp_path / "hm"), *map(str, images)]))  # bf16 path
    assert rc == 0
    res = json.loads(pred_json.read_text())["results"]
    assert [r["decision"] in ("accept", "reject") for r in res] == [True, True]
    assert len(list((tmp_path / "hm").glob("*_heatmap.png"))) == 2
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    rc = cmd_predict(parser.parse_args(["predict", "--model", str(model_dir), "--json", str(pred_json), str(bad)]))
    assert rc == 2 and "bad.png: unreadable image" in capsys.readouterr().err
    rc = cmd_train(parser.parse_args(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]))
    assert rc == 2 and "nope: dataset folder does not exist" in capsys.readouterr().err
    rc = cmd_train(parser.parse_args(["train", "--data", str(dataset), "--out", str(tmp_path / "x"),
                                      "--profile-set", "latent_size=4"]))
    assert rc == 2 and "unknown ModelProfile field(s) ['latent_size']" in capsys.readouterr().err


def test_refresh_bn_stats_matches_inference(dataset: Path, tmp_path: Path) -> None:
    """BatchNorm statistics are re-estimated as inference runs: G first, then the U-Net on eval-mode G output."""
    trainer = Trainer(_cfg(dataset, tmp_path / "m", epochs=1))
    g_bn = trainer.model.generator.encoder.features[1][0].bn1  # first BN after the stem
    u_bn = trainer.model.unet.stem[1]
    for bn in (g_bn, u_bn):
        bn.running_mean.fill_(100.0)  # stale statistics, as after weights moved
    seen: dict[str, list[torch.Tensor]] = {"g": [], "u": []}
    g_mode: list[bool] = []
    def on_u(module: object, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        seen["u"].append(inputs[0].detach().mean(dim=(0, 2, 3)))
        g_mode.append(trainer.model.generator.training)

    hooks = [g_bn.register_forward_hook(lambda m, i, o: seen["g"].append(i[0].detach().mean(dim=(0, 2, 3)))),
             u_bn.register_forward_hook(on_u)]
    trainer.refresh_bn_stats(max_images=8)
    for h in hooks:
        h.remove()
    # a cumulative average over the refresh batches (equal-size batches: the mean of their means)
    assert torch.allclose(g_bn.running_mean, torch.stack(seen["g"]).mean(0), atol=1e-5)
    assert torch.allclose(u_bn.running_mean, torch.stack(seen["u"]).mean(0), atol=1e-5)
    # while the U-Net's statistics were taken, the generator ran in eval mode, as at inference
    assert g_mode and not any(g_mode)
    assert g_bn.momentum == 0.1 and u_bn.momentum == 0.1 and trainer.model.training


def test_select_by_val_auroc_ships_the_best_labelled_epoch(dataset: Path, tmp_path: Path) -> None:
    """The shipped weights are those of the epoch with the best image AUROC on the labelled val split."""
    from linecam.grdnet.datasets import open_split
    from linecam.grdnet.evaluate import image_auroc, predict_dataset

    cfg = _cfg(dataset, tmp_path / "m", epochs=4, max_steps_per_epoch=2, select_by="val_auroc")
    run_training(cfg)
    hist = json.loads((cfg.out / TRAINING_SUBDIR / "history.json").read_text())
    aurocs = [h["val_auroc"] for h in hist]
    assert all(0.0 <= a <= 1.0 for a in aurocs)
    best_epoch = 1 + max(range(len(aurocs)), key=lambda i: (aurocs[i], -i))  # first epoch with the best value
    model, card = load_model_dir(cfg.out)
    vm = card.training["val_metrics"]
    assert vm["selected_by"] == "val_auroc" and vm["selected_epoch"] == best_epoch
    assert vm["best_val_auroc"] == pytest.approx(max(aurocs))
    assert card.training["select_split"] == "val"
    # Re-scoring the shipped model on the val split reproduces the AUROC recorded for its epoch.
    preds = predict_dataset(model, open_split(dataset, "val", 32), batch_size=4, precision="fp32")
    assert image_auroc(preds.labels, preds.scores) == pytest.approx(max(aurocs), abs=1e-9)


def test_select_by_val_auroc_refuses_test_or_unlabelled_split(dataset: Path, tmp_path: Path) -> None:
    from linecam.grdnet.train import TrainError

    with pytest.raises(TrainError, match="must not be 'test'"):
        Trainer(_cfg(dataset, tmp_path / "a", epochs=1, select_by="val_auroc", select_split="test"))
    with pytest.raises(TrainError, match="needs both good and defective"):
        Trainer(_cfg(dataset, tmp_path / "b", epochs=1, select_by="val_auroc", select_split="train"))
    with pytest.raises(TrainError, match="labelled split 'calib'"):
        Trainer(_cfg(dataset, tmp_path / "c", epochs=1, select_by="val_auroc", select_split="calib"))


def test_ema_weights_average_with_warmup_and_resume(dataset: Path, tmp_path: Path) -> None:
    """EMA: ema <- d*ema + (1-d)*w with d = min(decay, (1+n)/(10+n)); saved, resumed, and the one shipped."""
    out = tmp_path / "m"
    trainer = Trainer(_cfg(dataset, out, epochs=1, max_steps_per_epoch=2, ema_decay=0.9))
    assert trainer.ema is not None and trainer.shipped is trainer.ema
    w = next(trainer.model.parameters())
    e = next(trainer.ema.parameters())
    with torch.no_grad():
        w.fill_(1.0)
        e.fill_(0.0)
    trainer._update_ema()  # step 1: d = 2/11
    assert torch.allclose(e, torch.full_like(e, 9 / 11))
    trainer.ema_steps = 1000
    with torch.no_grad():
        e.fill_(0.0)
    trainer._update_ema()  # warm-up over: d = 0.9
    assert torch.allclose(e, torch.full_like(e, 0.1))
    trainer.fit()
    ck = torch.load(out / TRAINING_SUBDIR / CHECKPOINT_LAST, weights_only=False)
    assert ck["ema_steps"] == 1003
    # The ema differs from the trained weights, and the best checkpoint holds the ema, not the raw weights.
    best = torch.load(out / TRAINING_SUBDIR / "checkpoint_best.pt", weights_only=False)["model"]
    raw, ema = trainer.model.state_dict(), trainer.ema.state_dict()
    key = next(k for k in raw if k.endswith("weight") and not torch.equal(raw[k], ema[k]))
    assert torch.equal(best[key], ema[key]) and not torch.equal(best[key], raw[key])
    resumed = Trainer(_cfg(dataset, out, epochs=2, max_steps_per_epoch=2, ema_decay=0.9))
    assert resumed.resume() == 1 and resumed.ema_steps == 1003
    assert resumed.ema is not None and torch.equal(resumed.ema.state_dict()[key], ema[key])
    plain = Trainer(_cfg(dataset, tmp_path / "plain", epochs=1, max_steps_per_epoch=1))
    plain.fit()
    with_ema = Trainer(_cfg(dataset, tmp_path / "plain", epochs=2, ema_decay=0.9))
    with pytest.raises(RuntimeError, match="no EMA weights"):
        with_ema.resume()
    by_auroc = Trainer(_cfg(dataset, tmp_path / "plain", epochs=2, select_by="val_auroc"))
    with pytest.raises(RuntimeError, match="chose its best epoch by val_loss"):
        by_auroc.resume()


def test_cosine_schedule_lowers_lr_each_epoch_and_resume_keeps_it(dataset: Path, tmp_path: Path) -> None:
    """--lr-schedule cosine: epoch e trains at lr * cosine_factor(e, E) in every optimiser; resume must match."""
    out = tmp_path / "cos"
    trainer = Trainer(_cfg(dataset, out, epochs=3, max_steps_per_epoch=1, lr=1e-3, lr_schedule="cosine"))
    trainer.fit()
    lrs = [r["lr"] for r in trainer.history]
    assert lrs == pytest.approx([1e-3 * cosine_factor(e, 3) for e in range(3)])
    assert lrs[0] == pytest.approx(1e-3) and lrs[0] > lrs[1] > lrs[2] > 1e-3 * COSINE_FLOOR
    assert cosine_factor(3, 3) == pytest.approx(COSINE_FLOOR)
    after = [o.param_groups[0]["lr"] for o in trainer.optimizers.values()]
    assert after == pytest.approx([1e-3 * COSINE_FLOOR] * 3)
    resumed = Trainer(_cfg(dataset, out, epochs=3, max_steps_per_epoch=1, lr=1e-3, lr_schedule="cosine"))
    assert resumed.resume() == 3
    assert resumed.opt_u.param_groups[0]["lr"] == pytest.approx(1e-3 * COSINE_FLOOR)
    with pytest.raises(RuntimeError, match="used --lr-schedule cosine"):
        Trainer(_cfg(dataset, out, epochs=3, max_steps_per_epoch=1, lr=1e-3)).resume()
    with pytest.raises(RuntimeError, match="laid over 3 epochs"):
        Trainer(_cfg(dataset, out, epochs=5, max_steps_per_epoch=1, lr=1e-3, lr_schedule="cosine")).resume()


def test_trainer_starts_the_unet_head_at_the_prior(dataset: Path, tmp_path: Path) -> None:
    head = Trainer(_cfg(dataset, tmp_path / "p", epochs=1, unet_prior=0.05)).model.unet.head
    bias = (head if isinstance(head, torch.nn.Conv2d) else head[0]).bias
    assert torch.allclose(bias, torch.full_like(bias, math.log(0.05 / 0.95)))
    head = Trainer(_cfg(dataset, tmp_path / "d", epochs=1, unet_prior=0.0)).model.unet.head
    bias = (head if isinstance(head, torch.nn.Conv2d) else head[0]).bias
    assert float(bias.abs().max()) < 0.5  # PyTorch's default init: |b| <= 1/sqrt(fan_in)


def test_target_dilate_grows_the_defect_inside_the_roi_only(dataset: Path, tmp_path: Path) -> None:
    """r = 2: a defect pixel inside the ROI becomes a 5x5 square clipped to the ROI; a defect pixel outside
    the ROI (even 1 px from its border) stays a single pixel and puts no target inside the ROI; without an ROI
    the square is whole; 0 keeps the paper's exact mask."""
    grown = Trainer(_cfg(dataset, tmp_path / "g", epochs=1, target_dilate=2))
    mask = torch.zeros(1, 1, 12, 12)
    mask[0, 0, 5, 3] = 1.0  # inside, 2 px from the ROI's left border (column 1)
    mask[0, 0, 5, 0] = 1.0  # outside, next to the border
    roi = torch.zeros(1, 1, 12, 12)
    roi[..., 1:, 1:] = 1.0
    target = grown.unet_target(mask, roi)
    assert set(target.unique().tolist()) == {0.0, 1.0}
    assert int(target[0, 0, :, 1:].sum()) == 25 and bool(target[0, 0, 3:8, 1:6].all())  # square of the inside one
    assert int(target[0, 0, :, 0].sum()) == 1  # the outside one: itself only, nothing grown outside the ROI
    no_roi = grown.unet_target(mask, None)
    assert int(no_roi.sum()) == 25 + 15 - 10  # both squares, the second cut by the image edge, overlapping
    exact = Trainer(_cfg(dataset, tmp_path / "e", epochs=1))
    assert exact.unet_target(mask, roi) is mask
    with pytest.raises(ValueError, match="target_dilate"):
        _cfg(dataset, tmp_path / "x", target_dilate=-1)


def test_init_from_starts_from_a_trained_model_and_its_discriminator(dataset: Path, tmp_path: Path) -> None:
    """Fine-tuning starts from the model directory's weights (generator and U-Net) and its checkpoint's
    discriminator, with a fresh history; the card records where it started; another profile is refused with
    the directory named, and so is an unreadable checkpoint, with the file named."""
    base = run_training(_cfg(dataset, tmp_path / "base", epochs=1, max_steps_per_epoch=2))
    assert base is not None
    trained, _ = load_model_dir(base)
    disc = torch.load(base / TRAINING_SUBDIR / CHECKPOINT_LAST, weights_only=False)["discriminator"]
    fresh = Trainer(_cfg(dataset, tmp_path / "fresh", epochs=1))
    tuned = Trainer(_cfg(dataset, tmp_path / "ft", epochs=1, init_from=base))
    for name, value in trained.state_dict().items():
        assert torch.equal(tuned.model.state_dict()[name], value), name
    for name, value in disc.items():
        assert torch.equal(tuned.disc.state_dict()[name], value), name
    # The fresh trainer with the same seed differs, so the equality above is the loading, not the seed.
    assert not all(torch.equal(fresh.model.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert tuned.history == [] and tuned.start_epoch == 0
    out = run_training(_cfg(dataset, tmp_path / "ft2", epochs=1, max_steps_per_epoch=1, init_from=base))
    assert out is not None and read_card(out).training["init_from"] == str(base)
    from linecam.grdnet.train import TrainError

    other = {**TINY, "latent_channels": 16}
    with pytest.raises(TrainError, match=r"init-from .*base.*profile differs .*latent_channels: 8 there, 16 here"):
        Trainer(_cfg(dataset, tmp_path / "bad", epochs=1, init_from=base, profile_overrides=other))
    with pytest.raises(TrainError, match="init-from .*nowhere"):
        Trainer(_cfg(dataset, tmp_path / "bad2", epochs=1, init_from=tmp_path / "nowhere"))
    (base / TRAINING_SUBDIR / CHECKPOINT_LAST).write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match=f"init-from .*{CHECKPOINT_LAST}: cannot take the discriminator"):
        Trainer(_cfg(dataset, tmp_path / "bad3", epochs=1, init_from=base))
