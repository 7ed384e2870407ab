"""Benchmarks end to end on the real samples in ../shared/data with a tiny random model; resume,
torchrun sharding, predictions files and error reporting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import textsam
from textsam import rle
from textsam.cli import main
from textsam.errors import InputError
from textsam.eval.report import TIMING_HEADER, strip_timing
from textsam.eval.runners import build_benchmark, resolve_templates, run_benchmark, score_predictions

from .conftest import REPO
from .tiny import tiny_sam

pytest.importorskip("pycocotools")

SINGLE = resolve_templates("single")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared, busy CPU: one intra-op thread is faster and far steadier than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    net = tiny_sam(with_text=True)
    # a random model's proposals pass no quality filter and its presence means nothing: keep every
    # proposal, so that the runs below have instances to write and score
    net.default_text_options = {"engine": {"presence_threshold": 0.0, "max_proposals": 8,
                                           "proposals": {"points_per_side": 4, "pred_iou_thresh": 0.0,
                                                         "stability_score_thresh": 0.0}}}
    return net


def _factory(model):
    from textsam.text.options import InstanceOptions, ScoringOptions, TextOptions

    options = TextOptions.from_dict(model.default_text_options)
    options = TextOptions(scoring=ScoringOptions(templates=tuple(SINGLE["templates"])),
                          instances=InstanceOptions(max_instances=3), engine=options.engine)  # fewer candidates
    return lambda: textsam.TextSamPredictor(model, text_options=options)


def _run(model, name, data, out, limit=2, **kw):
    bench = build_benchmark(name, data, templates=None if name == "points" else SINGLE, **kw)
    return run_benchmark(bench, out, factory=_factory(model), model_info={"name": "tiny"}, limit=limit,
                         progress=False)


def _same_reports(a: Path, b: Path) -> None:
    ja, jb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert strip_timing(ja) == strip_timing(jb)
    ma, mb = ((d / "report.md").read_text().split(TIMING_HEADER)[0] for d in (a, b))
    assert ma == mb


def _patch_create_model(monkeypatch, model) -> None:
    monkeypatch.setattr(textsam, "create_model", lambda name, **kw: model)


# ------------------------------------------------------------------------------------- end to end
def test_refer_cli_end_to_end(shared_data, model, monkeypatch, tmp_path, capsys) -> None:
    _patch_create_model(monkeypatch, model)
    out = tmp_path / "refer"
    argv = ["eval", "refer", "--data", str(shared_data / "refcocos_on_coco_tiny"), "--limit", "2",
            "--templates", "single", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"images": 2, "expressions": 2}
    assert set(report["metrics"]) == {"mIoU", "cIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"}
    assert report["templates"]["name"] == "single" and report["problems"] == []
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    md = (out / "report.md").read_text()
    assert "| protocol |" in md and "| mIoU |" in md and "## Timing" in md
    assert "mIoU" in capsys.readouterr().err


def test_instances_end_to_end(shared_data, model, monkeypatch, tmp_path) -> None:
    # every one of the 80 category names costs a text prompt per image: the CLI run uses a subset
    _patch_create_model(monkeypatch, model)
    out = tmp_path / "inst"
    cats = "person,car,dog,cat,chair,bowl,bus,umbrella"
    assert main(["eval", "instances", "--data", str(shared_data / "coco_val2017_tiny"), "--limit", "2",
                 "--categories", cats, "--templates", "single", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert report["counts"]["images"] == 2 and report["counts"]["results"] > 0
    assert "8 of 80 categories" in report["protocol"]
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    r = rec["results"][0]
    assert isinstance(r["segmentation"]["counts"], str) and {"image_id", "category_id", "score"} <= set(r)
    with pytest.raises(InputError, match="unknown category 'unicorn'"):
        build_benchmark("instances", shared_data / "coco_val2017_tiny", categories=["person", "unicorn"])


def test_points_end_to_end(shared_data, model, monkeypatch, tmp_path) -> None:
    data = shared_data / "coco_val2017_tiny"
    report = _run(model, "points", data, tmp_path / "pts", limit=1)  # 1 mask, every N of the protocol
    assert list(report["metrics"]) == ["most_confident", "oracle"]
    assert list(report["metrics"]["oracle"]) == ["mIoU@1", "mIoU@2", "mIoU@3", "mIoU@5", "mIoU@9"]
    for n in (1, 2, 3, 5, 9):  # the oracle picks the best of the same 3 masks
        assert report["metrics"]["oracle"][f"mIoU@{n}"] >= report["metrics"]["most_confident"][f"mIoU@{n}"]
    rec = json.loads((tmp_path / "pts" / "results.jsonl").read_text().splitlines()[0])
    clicks = rec["masks"][0]["clicks"]
    assert clicks[0][2] == 1 and len(clicks) <= 9 and len(rec["masks"][0]["best"]) == 5

    _patch_create_model(monkeypatch, model)  # --limit 2 through the CLI, fewer clicks to stay fast
    out = tmp_path / "cli"
    assert main(["eval", "points", "--data", str(data), "--limit", "2", "--clicks", "1,2,3", "--no-progress",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["images"] == 2 and report["counts"]["masks"] > 2
    assert list(report["metrics"]["oracle"]) == ["mIoU@1", "mIoU@2", "mIoU@3"]


@pytest.mark.parametrize("folder, layout", [("camvid_segnet_subset", "camvid"),
                                            ("ade20k_sceneparsing_sample", "ade20k"),
                                            ("voc_format_labelme_sample", "voc")])
def test_semseg_end_to_end(shared_data, model, tmp_path, folder, layout) -> None:
    report = _run(model, "semseg", shared_data / folder, tmp_path / layout, layout=layout)
    assert list(report["metrics"]) == ["full", "oracle"]
    assert "full vocabulary" in report["protocol"] and "oracle vocabulary" in report["protocol"]
    for proto in ("full", "oracle"):
        assert 0 <= report["metrics"][proto]["mIoU"] <= 1
    assert report["counts"]["images"] == 2 and report["data"]["layout"] == layout


def test_synthetic_end_to_end(model, tmp_path) -> None:
    from textsam.data.synthetic import generate

    generate(tmp_path / "syn", seed=0, num_train=0, num_val=0, num_test=3, image_size=64)
    report = _run(model, "synthetic", tmp_path / "syn", tmp_path / "out", limit=1)
    assert report["benchmark"] == "synthetic" and report["data"]["split"] == "test"
    assert report["counts"]["images"] == 1 and report["counts"]["expressions"] >= 1


def test_synthetic_report_scores_each_phrase_kind(tmp_path) -> None:
    """Refs with a ``kind`` get per-kind metrics: ground truth everywhere but empty masks for spatial phrases
    scores 1 on attribute and category phrases and 0 on spatial ones."""
    import numpy as np

    from textsam.data.synthetic import generate

    generate(tmp_path / "syn", seed=0, num_train=0, num_val=0, num_test=4, image_size=64)
    bench = build_benchmark("synthetic", tmp_path / "syn")
    recs = []
    for key in bench.keys():
        preds = []
        for ref, i, _ in bench._by_image[int(key)]:
            mask = bench.dataset.target_mask(ref)
            if ref.extra["kind"] == "spatial":
                mask = np.zeros_like(mask)
            preds.append({"ref_id": ref.ref_id, "sent_idx": i, "segmentation": rle.encode(mask), "score": 1.0})
        recs.append({"key": key, "predictions": preds})
    rep = score_predictions(bench, _write_jsonl(tmp_path / "p.jsonl", recs), tmp_path / "r")
    kinds = rep["details"]["by phrase kind"]
    assert set(kinds) == {"attribute", "category", "spatial"}
    assert kinds["attribute"]["mIoU"] == kinds["category"]["mIoU"] == 1.0 and kinds["spatial"]["mIoU"] == 0.0
    counts = rep["counts"]
    assert sum(counts[f"{k} expressions"] for k in kinds) == counts["expressions"]
    assert rep["metrics"]["mIoU"] == pytest.approx(1 - counts["spatial expressions"] / counts["expressions"])
    assert "## by phrase kind" in (tmp_path / "r" / "report.md").read_text()


# ------------------------------------------------------------------------------ ground truth fed back
def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_ground_truth_as_predictions_scores_perfectly(shared_data, tmp_path) -> None:
    refer = build_benchmark("refer", shared_data / "refcocos_on_coco_tiny")
    recs = []
    for key in refer.keys():
        preds = [{"ref_id": ref.ref_id, "sent_idx": i, "segmentation": rle.encode(refer.dataset.target_mask(ref)),
                  "score": 1.0} for ref, i, _ in refer._by_image[int(key)]]
        recs.append({"key": key, "predictions": preds})
    rep = score_predictions(refer, _write_jsonl(tmp_path / "refer.jsonl", recs), tmp_path / "r")
    assert rep["metrics"]["mIoU"] == 1.0 and rep["metrics"]["cIoU"] == 1.0 and rep["counts"]["expressions"] == 8

    sem = build_benchmark("semseg", shared_data / "voc_format_labelme_sample", layout="voc")
    recs = []
    for key in sem.keys():
        gt = sem.dataset.load_label(key)
        segs = [{"class": c, "segmentation": rle.encode(gt == c)} for c in sem.dataset.present_classes(gt)]
        recs.append({"key": key, "full": segs, "oracle": segs})
    rep = score_predictions(sem, _write_jsonl(tmp_path / "sem.jsonl", recs), tmp_path / "s")
    for proto in ("full", "oracle"):
        assert rep["metrics"][proto]["mIoU"] == 1.0 and rep["metrics"][proto]["pixel_accuracy"] == 1.0

    coco_root = shared_data / "coco_val2017_tiny"
    inst = build_benchmark("instances", coco_root)
    ds = inst.dataset
    results = [{"image_id": a.image_id, "category_id": a.category_id, "segmentation": rle.encode(ds.mask(a)),
                "score": 1.0} for a in ds.annotations.values() if not a.iscrowd]
    (tmp_path / "gt_results.json").write_text(json.dumps(results))
    out = tmp_path / "i"
    assert main(["eval", "instances", "--data", str(coco_root), "--predictions", str(tmp_path / "gt_results.json"),
                 "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["metrics"]["AP"] == pytest.approx(1.0) and rep["metrics"]["AP50"] == pytest.approx(1.0)
    assert rep["model"]["name"].startswith("predictions file")


# ------------------------------------------------------------------------------ resume and sharding
def test_interrupted_then_resumed_gives_the_same_report(shared_data, model, tmp_path) -> None:
    data = shared_data / "refcocos_on_coco_tiny"
    _run(model, "refer", data, tmp_path / "full", limit=None)
    _run(model, "refer", data, tmp_path / "resumed", limit=3)  # "killed" after 3 images
    with open(tmp_path / "resumed" / "results.jsonl", "a") as f:
        f.write('{"key": "999", "predic')  # a line cut off by the kill
    report = _run(model, "refer", data, tmp_path / "resumed", limit=None)
    assert report["timing"]["images_resumed_from_earlier_runs"] == 3
    _same_reports(tmp_path / "full", tmp_path / "resumed")
    lines = (tmp_path / "resumed" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == build_benchmark("refer", data).keys()
    with pytest.raises(InputError, match="different run"):
        _run(model, "semseg", shared_data / "camvid_segnet_subset", tmp_path / "resumed")


_DRIVER = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {repo!r})
import textsam
from tests.tiny import tiny_sam
textsam.create_model = lambda name, **kw: tiny_sam(with_text=True)
from textsam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_torchrun_two_processes_match_one(shared_data, tmp_path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER.format(repo=str(REPO)))
    args = ["eval", "refer", "--data", str(shared_data / "refcocos_on_coco_tiny"), "--templates", "single",
            "--no-progress", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(driver), *args, str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(driver), *args, str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    _same_reports(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "report.json").read_text())["timing"]["processes"] == 2
    assert not list((tmp_path / "two").glob("results.rank*.jsonl"))
    assert len((tmp_path / "two" / "results.jsonl").read_text().splitlines()) == 8


# ------------------------------------------------------------------------------------------- errors
def test_malformed_annotation_file_is_a_clear_error(tmp_path, capsys) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text('{"images": [')
    assert main(["eval", "instances", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "instances_val2017.json" in err and "not a valid JSON" in err


def test_missing_image_is_listed_and_scored_as_a_miss(shared_data, model, tmp_path) -> None:
    data = tmp_path / "refer"
    shutil.copytree(shared_data / "refcocos_on_coco_tiny", data)
    (data / "images" / "000000037777.jpg").unlink()
    report = _run(model, "refer", data, tmp_path / "out", limit=None)
    assert report["counts"]["expressions"] == 8
    assert any("1 image(s) missing or unreadable" in p and "37777" in p for p in report["problems"])
    assert "37777" in (tmp_path / "out" / "report.md").read_text().split("## Problems")[1]


def test_unknown_class_name_in_predictions(shared_data, tmp_path) -> None:
    sem = build_benchmark("semseg", shared_data / "voc_format_labelme_sample", layout="voc")
    key = sem.keys()[0]
    seg = {"class": "unicorn", "segmentation": rle.encode(np.ones(sem.dataset.load_label(key).shape, bool))}
    path = _write_jsonl(tmp_path / "p.jsonl", [{"key": key, "full": [seg], "oracle": [seg]}])
    with pytest.raises(InputError, match="unknown class name 'unicorn'.*person"):
        score_predictions(sem, path, tmp_path / "o")
    with pytest.raises(InputError, match="unknown layout"):
        build_benchmark("semseg", shared_data / "voc_format_labelme_sample", layout="cityscapes")


def test_empty_predictions_file_is_an_error(shared_data, tmp_path, capsys) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    for bench, data in (("refer", "refcocos_on_coco_tiny"), ("instances", "coco_val2017_tiny")):
        code = main(["eval", bench, "--data", str(shared_data / data), "--predictions",
                     str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / bench)])
        assert code == 2 and "empty" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(InputError, match="empty list"):
        score_predictions(build_benchmark("instances", shared_data / "coco_val2017_tiny"),
                          tmp_path / "empty.json", tmp_path / "o")


def test_semseg_layouts_and_label_values(tmp_path) -> None:
    from PIL import Image

    from textsam.data.semseg import SemsegDataset

    root = tmp_path / "VOC2010"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassContext").mkdir()
    (root / "classes.txt").write_text("background\naeroplane\nbag\n")
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(np.array([[0, 1, 2, 255, 0, 0]] * 4, np.uint8)).save(root / "SegmentationClassContext" / "a.png")
    Image.fromarray(np.array([[0, 7, 0, 0, 0, 0]] * 4, np.uint8)).save(root / "SegmentationClassContext" / "b.png")
    ds = SemsegDataset.from_layout("context", tmp_path)  # enters the single VOC2010/ sub-folder
    assert ds.class_names == ["background", "aeroplane", "bag"] and ds.background_index == 0
    assert ds.load_label("a")[0].tolist() == [0, 1, 2, 255, 0, 0]
    assert ds.missing_images == ["b"]
    with pytest.raises(InputError, match=r"label value\(s\) \[7\] have no class name"):
        ds.load_label("b")
    bench = build_benchmark("semseg", tmp_path, layout="context", templates=SINGLE)
    assert bench.prompted == [1, 2]  # the background class is what "nothing confident" means, not a prompt

    ade = tmp_path / "ade"
    (ade / "images").mkdir(parents=True)
    (ade / "annotations").mkdir()
    (ade / "objectInfo150.csv").write_text("Idx,Ratio,Train,Val,Stuff,Name\n1,0.1,1,1,1,wall\n2,0.1,1,1,1,building;edifice\n")
    Image.fromarray(np.array([[0, 1, 2]], np.uint8)).save(ade / "annotations" / "x.png")
    ds = SemsegDataset.from_layout("ade20k", ade)
    assert ds.class_names == ["wall", "building"] and ds.load_label("x").tolist() == [[255, 0, 1]]


# ------------------------------------------------------------------------------- output folder, files
@pytest.fixture(scope="module")
def syn_points(tmp_path_factory) -> Path:
    from textsam.data.synthetic import generate

    root = tmp_path_factory.mktemp("syn_points") / "syn"
    generate(root, seed=0, num_train=0, num_val=0, num_test=3, image_size=64)
    return root / "test"


def _points(model, data, out, **kw):
    return _run(model, "points", data, out, limit=kw.pop("limit", 2), clicks=[1], **kw)


def test_output_folder_problems_are_refused_and_nothing_changes(model, syn_points, tmp_path) -> None:
    (tmp_path / "file").write_text("mine")
    with pytest.raises(InputError, match="is a file, not a folder"):
        _points(model, syn_points, tmp_path / "file")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "report.md").write_text("my own report")
    with pytest.raises(InputError, match="report.md but no run.json"):
        _points(model, syn_points, foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["report.md"]
    _points(model, syn_points, tmp_path / "run", limit=1)
    (tmp_path / "run" / "run.json").write_text('{"benchmark": "poi')
    with pytest.raises(InputError, match="run.json is unreadable"):
        _points(model, syn_points, tmp_path / "run")


def test_a_run_that_stopped_before_its_first_image_does_not_block_the_corrected_command(
    model, syn_points, tmp_path
) -> None:
    bench = build_benchmark("points", syn_points, clicks=[1])

    def broken():
        raise InputError("cannot read the checkpoint")

    with pytest.raises(InputError, match="checkpoint"):
        run_benchmark(bench, tmp_path / "out", factory=broken, model_info={"name": "tiny", "checkpoint": "bad.pth"},
                      progress=False)
    report = run_benchmark(bench, tmp_path / "out", factory=_factory(model), model_info={"name": "tiny"}, limit=1,
                           progress=False)
    assert report["counts"]["images"] == 1
    assert json.loads((tmp_path / "out" / "run.json").read_text())["model"] == {"name": "tiny"}


def test_a_last_line_without_its_newline_is_redone(model, syn_points, tmp_path) -> None:
    """A kill can cut a results line anywhere, even just before its newline: such a line is not trusted."""
    out = tmp_path / "out"
    first = _points(model, syn_points, out)
    results = out / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(lines[0] + lines[1].rstrip("\n"))  # complete JSON, but no newline
    again = _points(model, syn_points, out)
    assert again["timing"]["images_resumed_from_earlier_runs"] == 1
    assert strip_timing(again) == strip_timing(first)
    assert results.read_text().endswith("\n") and len(results.read_text().splitlines()) == 2


def test_outputs_are_renamed_into_place_with_the_usual_permissions(model, syn_points, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        _points(model, syn_points, tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes == dict.fromkeys(["report.json", "report.md", "results.jsonl", "run.json"], 0o644), modes


def test_predictions_that_are_a_folder_or_binary(syn_points, tmp_path) -> None:
    bench = build_benchmark("points", syn_points, clicks=[1])
    with pytest.raises(InputError, match="is a folder"):
        score_predictions(bench, tmp_path, tmp_path / "o")
    (tmp_path / "p.jsonl").write_bytes(b'{"key": "5"}\n\xff\xfe\x00garbage\n')
    with pytest.raises(InputError, match="not a UTF-8 text file"):
        score_predictions(bench, tmp_path / "p.jsonl", tmp_path / "o")
    key = bench.keys()[0]
    (tmp_path / "q.jsonl").write_text(json.dumps({"key": key, "masks": [{"best": []}]}))  # no final newline: fine
    with pytest.raises(InputError, match="needs an integer 'ann_id'"):
        score_predictions(bench, tmp_path / "q.jsonl", tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device whose writes fail with ENOSPC)")
def test_a_full_disk_while_appending_a_record_is_a_clear_error(tmp_path) -> None:
    from textsam.eval.base import JsonlWriter

    path = tmp_path / "results.jsonl"
    path.symlink_to("/dev/full")
    with pytest.raises(InputError, match="No space left on device.*finished images are kept"):
        with JsonlWriter(path) as writer:
            writer.write({"key": "1", "masks": []})
