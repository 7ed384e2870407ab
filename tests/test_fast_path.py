"""The CPU fast path: ``TextOptions.fast()`` and the CLI's ``--fast`` (mobile_sam by default, a lighter engine)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from textsam.cli import main
from textsam.cli.common import predictor_from_args, resolve_fast_model
from textsam.text.options import (
    FAST_MAX_PROPOSALS,
    FAST_MAX_SEEDS,
    FAST_POINTS_PER_SIDE,
    FAST_SHORTLIST,
    InstanceOptions,
    TextOptions,
)


def test_fast_options_lighten_only_the_engine() -> None:
    base = TextOptions(instances=InstanceOptions(max_instances=3))
    fast = base.fast()
    assert fast.engine.proposals.points_per_side == FAST_POINTS_PER_SIDE == 8
    assert fast.engine.max_proposals == FAST_MAX_PROPOSALS == 16
    assert fast.engine.max_seeds == FAST_MAX_SEEDS < base.engine.max_seeds
    assert fast.engine.shortlist == FAST_SHORTLIST < base.engine.shortlist
    assert fast.instances == base.instances and fast.locator == base.locator and fast.scoring == base.scoring
    assert fast.engine.proposals.pred_iou_thresh == base.engine.proposals.pred_iou_thresh
    assert fast.fast() == fast  # applying it twice changes nothing
    assert base.engine.proposals.points_per_side == 16  # the original is untouched (frozen)


def _args(**kw: object) -> argparse.Namespace:
    values = dict(model=None, checkpoint=None, clip=None, text_head=None, no_text_head=False, device=None, fast=False)
    values.update(kw)
    return argparse.Namespace(**values)


def test_fast_picks_mobile_sam_unless_a_model_is_given() -> None:
    for kw, expected in (({"fast": True}, "mobile_sam"), ({}, "sam_vit_b"),
                         ({"fast": True, "model": "sam_vit_h"}, "sam_vit_h")):
        args = _args(**kw)
        resolve_fast_model(args, "sam_vit_b")
        assert args.model == expected


def test_fast_predictor_keeps_the_models_own_options() -> None:
    fast = predictor_from_args(_args(model="shapes_tiny", no_text_head=True, fast=True))
    plain = predictor_from_args(_args(model="shapes_tiny", no_text_head=True))
    assert fast.text.options == plain.text.options.fast()
    assert fast.text.options.grounding.enabled is False  # the bundle's own setting survives


def test_cli_segment_fast_runs_and_is_a_request_of_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    common = ["segment", "--example", "--no-text-head", "--text", "red circle", "-o", str(out), "--no-progress"]
    assert main([*common, "--fast"]) == 0
    (result,) = out.glob("*.json")
    doc = json.loads(result.read_text())
    assert doc["results"] and doc["results"][0]["area"] > 0
    assert main([*common, "--fast"]) == 0
    assert "already done" in capsys.readouterr().err  # the same request resumes ...
    assert main(common) == 0
    assert "already done" not in capsys.readouterr().err  # ... another one (without --fast) runs again


def test_eval_fast_uses_the_fast_engine_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``textsam eval ... --fast`` builds its predictors with the fast engine and records it in run.json (a run
    without it is another run)."""
    from textsam.data.synthetic import generate
    from textsam.eval import runners

    generate(tmp_path / "syn", seed=0, num_train=0, num_val=0, num_test=2, image_size=64)
    built: list[TextOptions] = []
    factory = runners.predictor_factory

    def spying(*args: object, **kwargs: object):  # noqa: ANN202
        build = factory(*args, **kwargs)
        return lambda: built.append(build().text.options) or build()

    monkeypatch.setattr(runners, "predictor_factory", spying)
    out = tmp_path / "out"
    command = ["eval", "synthetic", "--data", str(tmp_path / "syn"), "--model", "shapes_tiny", "--no-text-head",
               "--limit", "1", "--no-progress", "--out", str(out)]
    assert main([*command, "--fast"]) == 0
    assert built and built[0].engine.proposals.points_per_side == FAST_POINTS_PER_SIDE
    assert json.loads((out / "run.json").read_text())["model"]["engine"] == "fast (TextOptions.fast)"
    assert main(command) == 2  # the same folder with another engine is refused


def test_fast_clip_is_vit_b32_for_a_published_sam_only(tmp_path: Path) -> None:
    """The fast path's CLIP (OpenAI ViT-B/32) replaces the default ViT-B/16 of a published SAM; a CLIP asked for,
    a bundled model's own CLIP and a text head's CLIP are kept."""
    from textsam.factory import fast_clip
    from textsam.text.clip import FAST_CLIP

    spec = "/".join(FAST_CLIP)
    assert spec == "ViT-B-32-quickgelu/openai"
    for name in ("mobile_sam", "sam_vit_b", "sam_vit_h"):
        assert fast_clip(name) == spec
    assert fast_clip("shapes_tiny") is None  # its head was trained on its own CLIP
    assert fast_clip("mobile_sam", "ViT-B-16-quickgelu/openai") == "ViT-B-16-quickgelu/openai"
    head = tmp_path / "head.safetensors"
    head.write_bytes(b"")
    assert fast_clip("sam_vit_b", text_head=head) is None
    assert fast_clip("sam_vit_b", text_head=False) == spec  # no head: the engine alone


def test_fast_resolves_the_clip_into_the_request() -> None:
    """``--fast`` names its CLIP in ``args.clip``, so a segment or label request's key says which CLIP answered."""
    from textsam.cli.segment import _model_key

    fast = _args(fast=True)
    resolve_fast_model(fast, "sam_vit_b")
    assert (fast.model, fast.clip) == ("mobile_sam", "ViT-B-32-quickgelu/openai")
    assert _model_key(fast)["clip"] == "ViT-B-32-quickgelu/openai" and _model_key(fast)["fast"] is True
    plain = _args()
    resolve_fast_model(plain, "sam_vit_b")
    assert plain.clip is None
    chosen = _args(fast=True, model="sam_vit_b", clip="ViT-B-16-quickgelu/openai")
    resolve_fast_model(chosen, "sam_vit_b")
    assert chosen.clip == "ViT-B-16-quickgelu/openai"
    bundled = _args(fast=True, model="shapes_tiny", no_text_head=True)
    resolve_fast_model(bundled, "sam_vit_b")
    assert bundled.clip is None


def test_fast_builds_a_published_sam_with_the_fast_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's ``--fast`` model (random weights here: no network) carries a ViT-B/32 CLIP, 49 patches a crop."""
    import textsam

    real = textsam.create_model
    monkeypatch.setattr(textsam, "create_model", lambda name, **kw: real(name, **{**kw, "pretrained": False}))
    args = _args(fast=True)
    resolve_fast_model(args, "sam_vit_b")
    predictor = predictor_from_args(args)
    clip = predictor.model.scoring_encoder
    assert (clip.model_name, clip.clip.visual.patch_size) == ("ViT-B-32-quickgelu", (32, 32))
    assert predictor.text.options.engine.shortlist == FAST_SHORTLIST


def test_eval_fast_names_the_fast_clip_of_a_published_sam(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``textsam eval ... --model mobile_sam --fast`` builds its predictors with ViT-B/32 and says so in run.json's
    model description (no model is built here: the benchmark run is replaced)."""
    from textsam.data.synthetic import generate
    from textsam.eval import runners

    generate(tmp_path / "syn", seed=0, num_train=0, num_val=0, num_test=1, image_size=64)
    seen: dict[str, object] = {}
    monkeypatch.setattr(runners, "predictor_factory", lambda *a, **kw: seen.update(kw) or (lambda: None))
    monkeypatch.setattr(runners, "run_benchmark", lambda *a, **kw: seen.update(info=kw["model_info"]) or {})
    command = ["eval", "synthetic", "--data", str(tmp_path / "syn"), "--model", "mobile_sam", "--limit", "1",
               "--no-progress", "--out", str(tmp_path / "out")]
    main([*command, "--fast"])
    assert seen["clip"] == "ViT-B-32-quickgelu/openai" and seen["info"]["clip"] == "ViT-B-32-quickgelu/openai"
    main(command)
    assert seen["clip"] is None and seen["info"]["clip"] is None


@pytest.mark.parametrize(("error", "expected"), [
    (RuntimeError("Failed to download weights for tag 'openai': no connection"),
     r"cannot get the CLIP weights ViT-B-32-quickgelu/openai .*fast path's CLIP: --clip ViT-B-16-quickgelu/openai"),
    (OSError("offline"), r"cannot get the CLIP weights .*--clip ViT-B-16-quickgelu/openai keeps the default"),
    (RuntimeError("Model config for ViT-B-32-quickgelu not found"), r"open_clip.list_pretrained\(\) lists"),
])
def test_the_fast_clip_that_cannot_be_downloaded_says_what_to_do(monkeypatch: pytest.MonkeyPatch, error: Exception,
                                                                 expected: str) -> None:
    """Without network the fast path's CLIP names the way back to the default CLIP (and a local file); an unknown
    name still points at open_clip's list (open_clip's own errors, raised here without touching the network)."""
    import open_clip

    from textsam.errors import WeightsError
    from textsam.text.clip import FAST_CLIP, TextEncoder

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(open_clip, "create_model", fail)
    monkeypatch.setattr(open_clip, "download_pretrained", fail)  # a tag's file is fetched first (no random build)
    with pytest.raises(WeightsError, match=expected):
        TextEncoder.create(*FAST_CLIP)
