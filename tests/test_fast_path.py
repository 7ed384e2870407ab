"""The CPU fast path: ``TextOptions.fast()`` and the CLI's ``--fast`` (mobile_sam by default, a lighter engine)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from textsam.cli import main
from textsam.cli.common import predictor_from_args, resolve_fast_model
from textsam.text.options import FAST_MAX_PROPOSALS, FAST_POINTS_PER_SIDE, InstanceOptions, TextOptions


def test_fast_options_lighten_only_the_engine() -> None:
    base = TextOptions(instances=InstanceOptions(max_instances=3))
    fast = base.fast()
    assert fast.engine.proposals.points_per_side == FAST_POINTS_PER_SIDE == 8
    assert fast.engine.max_proposals == FAST_MAX_PROPOSALS == 16
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
