"""Assemble the bundled ``shapes_tiny`` model from its training stages, or unpack it into a run folder.

    python tools/shapes_tiny_bundle.py --sam runs/v2_text --text runs/v2_tower --clip runs/gpu_clip \
        --data runs/shapes_data --out runs/v2_tower/bundle.safetensors --text-options '{"grounding": false}'

Stage outputs: ``--sam`` (a run whose SAM parts are taken: image encoder, prompt encoder, decoder), ``--text``
(a text-recipe run: its own parts, and whatever the start weights it was trained from held, replace the SAM
stage's; its ``text_head.safetensors`` is the bundle's text head, with the fine-tuned CLIP text tower when there
is one), ``--clip`` (an open_clip ``local-dir:`` folder from ``textsam.train.clip_pretrain``: the CLIP the
training-free engine scores with). The bundle is one file in the textsam format (``textsam.weights.format``),
fp16, with that whole CLIP (``clip.*``, its open_clip config in the header), the text head's fine-tuned text
tower as ``head_tower.*`` when it differs from that CLIP's own, and their token tables stored only for the tokens
of the synthetic phrases and the prompt templates (plus the 256 byte tokens). ``--text-options``: the model's
own text-option defaults.

    python tools/shapes_tiny_bundle.py --unpack textsam/weights/shapes_tiny.safetensors --out runs/shipped

writes a bundle back out as a run folder (``model.safetensors`` with every part, the whole CLIP and the head's
tower included, ``text_head.safetensors`` with the head's tower, and the engine's CLIP as ``clip/``, an open_clip
``local-dir:``), so a later stage can start
from shipped weights (``checkpoint = "runs/shipped/model.safetensors"``, ``clip = "local-dir:runs/shipped/clip"``)
and the assembler can take it as ``--sam``/``--clip``.

Research tooling: not part of the installed package (run it from a textsam checkout's environment).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from textsam.config import SHAPES_TINY
from textsam.errors import InputError
from textsam.factory import build_sam, load_textsam_file
from textsam.model import TextSam
from textsam.text.clip import TextEncoder, is_text_tower_key, load_text_tower
from textsam.text.options import TextOptions
from textsam.text.templates import DEFAULT_TEMPLATES
from textsam.weights import format as fmt
from textsam.weights.checkpoint import load_into

logger = logging.getLogger("shapes_tiny_bundle")
SAM_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def _load_sam_parts(model: TextSam, file: fmt.TextsamFile) -> list[str]:
    """Load the SAM parts ``file`` holds into ``model`` (each strictly); returns their names."""
    parts = [p for p in SAM_PARTS if file.part(p)]
    for part in parts:
        load_into(getattr(model, part), file.part(part), strict=True)
    return sorted(parts)


def _tower(file: fmt.TextsamFile) -> dict[str, torch.Tensor]:
    """The text tower a text head of ``file`` reads: its ``head_tower``, else the text-tower tensors of its
    ``clip`` (a fine-tuned tower or a whole CLIP); empty: none."""
    return file.part("head_tower") or {k: v for k, v in file.part("clip").items() if is_text_tower_key(k)}


def used_token_ids(data_root: Path, tokenizer: Any) -> list[int]:
    """Token ids of every phrase of the synthetic data (all splits) and of the prompt templates."""
    phrases: set[str] = set()
    for refs in sorted(data_root.glob("*/refs.json")):
        for ref in json.loads(refs.read_text()):
            phrases.update(s["sent"] for s in ref["sentences"])
    for instances in sorted(data_root.glob("*/instances.json")):
        phrases.update(c["name"] for c in json.loads(instances.read_text())["categories"])
    texts = sorted(phrases) + [t.format(p) for t in DEFAULT_TEMPLATES for p in sorted(phrases)[:50]]
    ids: set[int] = set()
    for i in range(0, len(texts), 512):
        ids.update(int(t) for t in tokenizer(texts[i : i + 512]).flatten().tolist())
    ids.update(range(256))  # byte-level tokens, so unseen words still get non-zero embeddings
    return sorted(ids)


def start_chain(run_dir: Path, max_depth: int = 10) -> list[Path]:
    """The start weights a run was trained from (its config's ``checkpoint``), and theirs, oldest first.

    A run that froze a part (e.g. the image encoder of a stage-4 run) exports only what it trained; the
    frozen part is the one in its ``checkpoint``, possibly inherited from that run's own ``checkpoint``."""
    chain: list[Path] = []
    cfg_path = run_dir / "train_config.json"
    while cfg_path.is_file() and len(chain) < max_depth:
        checkpoint = json.loads(cfg_path.read_text()).get("checkpoint")
        if not checkpoint:
            break
        path = Path(checkpoint)
        if not path.is_file():
            logger.warning("%s names start weights %s that are not here; the bundle uses --sam's parts instead",
                           cfg_path, path)
            break
        chain.append(path)
        cfg_path = path.parent / "train_config.json"
    return chain[::-1]


def text_options(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (grouped or the older flat names) checked, as the groups and options that differ from the
    defaults (e.g. ``{"grounding": false}`` -> ``{"grounding": {"enabled": false}}``)."""
    chosen, default = TextOptions.from_dict(raw).to_dict(), TextOptions().to_dict()
    changed = {g: {k: v for k, v in values.items() if default[g][k] != v} for g, values in chosen.items()}
    return {g: values for g, values in changed.items() if values}


def assemble(sam_dir: Path, text_dir: Path, clip_dir: Path, data_root: Path, out: Path,
             options: dict[str, Any] | None = None) -> Path:
    """Combine the stages into one bundle file at ``out`` (returns it).

    Layers, later ones replacing earlier ones: the SAM stage's parts, then the start weights the text run
    was trained from (:func:`start_chain`; they hold any part the text run froze), then the text run's own;
    the text head (and the tower it was trained with) from the text run's ``text_head.safetensors``."""
    model = build_sam(SHAPES_TINY)
    sam_parts = _load_sam_parts(model, fmt.read(sam_dir / "model.safetensors"))
    chain = start_chain(text_dir)
    tower: dict[str, torch.Tensor] = {}
    tower_from = None
    text_parts: list[str] = []
    for path in [*chain, text_dir / "model.safetensors"]:
        file = fmt.read(path)
        text_parts = _load_sam_parts(model, file)
        if _tower(file):  # a tower tuned by the text run, or by a run it started from if it kept it frozen
            tower, tower_from = _tower(file), path
    head_path = text_dir / "text_head.safetensors"
    head = fmt.read(head_path)
    if head.text_head is None:
        raise InputError(f"{head_path} holds no text head")
    if _tower(head):
        tower, tower_from = _tower(head), head_path
    encoder = TextEncoder.create(f"local-dir:{clip_dir.resolve()}", None)
    tensors = dict(model.sam_state_dict())
    tensors.update({k: v for k, v in head.tensors.items() if k.startswith(("text_projector.", "text_locator."))})
    tensors.update({f"clip.{k}": v for k, v in encoder.clip.state_dict().items()})
    if tower:
        load_text_tower(encoder.text_copy(), tower, str(tower_from))  # checks that it fits this CLIP
        own = encoder.clip.state_dict()
        if any(not torch.equal(v.float(), own[k].float()) for k, v in tower.items()):
            tensors.update({f"head_tower.{k}": v.float() for k, v in tower.items()})
            text_parts.append("head_tower (the text head's fine-tuned CLIP text tower)")
    clip_cfg = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]
    record: dict[str, Any] = {
        "stages": {"sam": str(sam_dir), "text": str(text_dir), "clip": str(clip_dir)},
        "parts_from_sam_stage": sam_parts,
        "start_weights_of_text_stage": [str(p) for p in chain],
        "parts_from_text_stage": text_parts,
        "text_head_recipe": head.training.get("recipe", ""),
        "data": json.loads((data_root / "meta.json").read_text()).get("counts", {}),
    }
    for name, d in (("sam_config", sam_dir), ("text_config", text_dir)):
        cfg = d / "train_config.json"
        if cfg.is_file():
            record[name] = json.loads(cfg.read_text())
    bundle = fmt.TextsamFile("shapes_tiny", fmt.ClipSpec("shapes_tiny_clip", None, clip_cfg, "full"), head.text_head,
                             tensors, text_options(options or {}), record)
    return fmt.write(out, bundle, dtype=torch.float16, sparse_token_ids=used_token_ids(data_root, encoder.tokenizer))


def unpack(bundle: Path, out_dir: Path) -> Path:
    """Write the bundle ``bundle`` as a run folder ``out_dir`` (see the module docstring); returns it.

    The weights are the bundle's (fp16-rounded) values as float32; CLIP tokens the bundle does not store get
    zero embedding rows, as when the bundle is loaded."""
    from textsam.train.clip_pretrain import save_local_dir

    file = fmt.read(bundle)
    if file.clip is None or file.clip.config is None or file.text_head is None:
        raise InputError(f"{bundle} is not a whole small model (SAM, CLIP with its config, text head)")
    model = build_sam(SHAPES_TINY)
    load_textsam_file(model, bundle)
    clip = model.scoring_encoder.clip  # the engine's CLIP, both towers trained together
    save_local_dir(clip, file.clip.config, out_dir / "clip")
    head = {f"text_projector.{k}": v for k, v in model.text_projector.state_dict().items()}
    if model.text_locator is not None:
        head.update({f"text_locator.{k}": v for k, v in model.text_locator.state_dict().items()})
    clip_state = {f"clip.{k}": v for k, v in clip.state_dict().items()}
    head_tower = {k: v for k, v in model.text_encoder.clip.state_dict().items() if is_text_tower_key(k)}
    training = {"recipe": file.training.get("text_head_recipe", "text"), "unpacked_from": str(bundle)}
    fmt.write(out_dir / "text_head.safetensors", fmt.TextsamFile(
        "shapes_tiny", replace(file.clip, tensors="text_tower"), file.text_head,
        {**head, **{f"clip.{k}": v for k, v in head_tower.items()}}, {}, training))
    own_tower = model.engine_encoder is None
    fmt.write(out_dir / "model.safetensors", fmt.TextsamFile(
        "shapes_tiny", replace(file.clip, tensors="full"), file.text_head,
        {**model.sam_state_dict(), **head, **clip_state,
         **({} if own_tower else {f"head_tower.{k}": v for k, v in head_tower.items()})},
        dict(file.text_options), training))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/shapes_tiny_bundle.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", type=Path)
    parser.add_argument("--text", type=Path)
    parser.add_argument("--clip", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--text-options", default="{}",
                        help='the model\'s default TextOptions as JSON, e.g. {"grounding": {"enabled": false}}')
    parser.add_argument("--unpack", type=Path, metavar="BUNDLE", help="write this bundle as a run folder --out")
    args = parser.parse_args(argv)
    if args.unpack is not None:
        print(f"wrote {unpack(args.unpack, args.out)}")
        return 0
    lacking = [f"--{n}" for n in ("sam", "text", "clip", "data") if getattr(args, n) is None]
    if lacking:
        parser.error(f"assembling a bundle needs {', '.join(lacking)} (or --unpack BUNDLE)")
    path = assemble(args.sam, args.text, args.clip, args.data, args.out, json.loads(args.text_options))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
