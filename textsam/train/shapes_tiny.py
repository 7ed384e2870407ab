"""Assemble the bundled ``shapes_tiny`` model from its three training stages.

    python -m textsam.train.shapes_tiny --sam runs/shapes_sam --text runs/shapes_text \
        --clip runs/shapes_clip --data runs/shapes_data --out textsam/weights/shapes_tiny.safetensors

Stage outputs: ``--sam`` (recipe "sam": image encoder, prompt encoder, decoder), ``--text`` (recipe "text":
prompt encoder, decoder and text projector, and whatever else it trained: image encoder, CLIP text
tower; its parts replace the SAM stage's), ``--clip`` (an open_clip
``local-dir:`` folder from ``textsam.train.clip_pretrain``). The bundle stores the CLIP token table only
for tokens that occur in the synthetic phrases and prompt templates (see ``textsam.bundle``).

    python -m textsam.train.shapes_tiny --unpack textsam/weights/shapes_tiny.safetensors --out runs/shipped

writes a bundle back out as a run folder (``model.safetensors`` with every part, ``text_head.safetensors``
and the CLIP as ``clip/``, an open_clip ``local-dir:``), so a later stage can start from shipped weights
(``checkpoint = "runs/shipped/model.safetensors"``, ``clip = "local-dir:runs/shipped/clip"``) and the
assembler can take it as ``--sam``/``--clip``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..bundle import save_bundle
from ..config import SHAPES_TINY
from ..errors import InputError
from ..factory import build_sam
from ..text.clip import TextEncoder, load_text_tower, text_tower_state
from ..text.templates import DEFAULT_TEMPLATES
from ..text_head import load_text_head

logger = logging.getLogger(__name__)


def _load_parts(model: torch.nn.Module, path: Path, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load the SAM parts of ``weights`` (read from ``path``; official key names) into ``model``; returns
    the part names."""
    state = {k: v for k, v in weights.items() if not k.startswith(("text_projector.", "text_encoder."))}
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise InputError(f"{path} has keys this model does not know: {unknown[:5]}")
    model.load_state_dict(state, strict=False)
    return sorted({k.split(".")[0] for k in state})


def used_token_ids(data_root: Path, tokenizer: object) -> list[int]:
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


def assemble(
    sam_dir: Path, text_dir: Path, clip_dir: Path, data_root: Path, out: Path, text_options: dict | None = None
) -> Path:
    """Combine the stages into one bundle file at ``out``.

    Layers, later ones replacing earlier ones: the SAM stage's parts, then the start weights the text run
    was trained from (:func:`start_chain`; they hold any part the text run froze), then the text run's own."""
    model = build_sam(SHAPES_TINY)
    sam_path = sam_dir / "model.safetensors"
    sam_parts = _load_parts(model, sam_path, load_file(str(sam_path)))
    chain = start_chain(text_dir)
    encoder = TextEncoder.create(f"local-dir:{clip_dir.resolve()}", None)
    tower: dict[str, torch.Tensor] = {}
    tower_from = None
    for path in [*chain, text_dir / "model.safetensors"]:
        weights = load_file(str(path))
        text_parts = _load_parts(model, path, weights)
        # a CLIP text tower fine-tuned by the text run (or by a run it started from, if it kept the tower
        # frozen) replaces the stage-1 one
        tuned = text_tower_state(weights)
        if tuned:
            tower, tower_from = tuned, path
    if tower:
        load_text_tower(encoder, tower, str(tower_from))
        text_parts.append("text_encoder (CLIP text tower)")
    projector, info = load_text_head(text_dir / "text_head.safetensors", sam_model="shapes_tiny",
                                     clip_model=None, clip_pretrained=None)
    model.text_encoder = encoder
    model.text_encoder.model_name = "shapes_tiny_clip"
    model.text_projector = projector
    clip_cfg = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]
    record = {
        "stages": {"sam": str(sam_dir), "text": str(text_dir), "clip": str(clip_dir)},
        "parts_from_sam_stage": sam_parts,
        "start_weights_of_text_stage": [str(p) for p in chain],
        "parts_from_text_stage": text_parts,
        "text_head_recipe": info.recipe,
        "data": json.loads((data_root / "meta.json").read_text()).get("counts", {}),
    }
    for name, d in (("sam_config", sam_dir), ("text_config", text_dir)):
        cfg = d / "train_config.json"
        if cfg.is_file():
            record[name] = json.loads(cfg.read_text())
    return save_bundle(out, model, clip_config=clip_cfg,
                       used_token_ids=used_token_ids(data_root, encoder.tokenizer), training=record,
                       text_options=text_options, dtype=torch.float16)


def unpack(bundle: Path, out_dir: Path) -> Path:
    """Write the bundle ``bundle`` as a run folder ``out_dir`` (see the module docstring); returns it.

    The weights are the bundle's (fp16-rounded) values as float32; CLIP tokens the bundle does not store
    get zero embedding rows, as when the bundle is loaded."""
    from safetensors.torch import save_file

    from ..bundle import load_bundle, read_bundle_meta
    from ..text.clip import TOWER_PREFIX, is_text_tower_key
    from ..text_head import TextHeadInfo, save_text_head
    from .clip_pretrain import save_local_dir

    meta = read_bundle_meta(bundle)
    model = load_bundle(bundle, build_sam(SHAPES_TINY))
    clip = model.text_encoder.clip
    out_dir.mkdir(parents=True, exist_ok=True)
    save_local_dir(clip, meta["clip_config"], out_dir / "clip")
    tensors = dict(model.sam_state_dict())
    tensors.update({f"text_projector.{k}": v for k, v in model.text_projector.state_dict().items()})
    tensors.update({TOWER_PREFIX + k: v for k, v in clip.state_dict().items() if is_text_tower_key(k)})
    record = {"format": "textsam.trained", "sam_model": "shapes_tiny", "recipe": "text",
              "unpacked_from": str(bundle), "parts": ["image_encoder", "prompt_encoder", "mask_decoder",
                                                      "text_projector", "text_encoder"]}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out_dir / "model.safetensors"),
              metadata={"textsam": json.dumps(record)})
    p = model.text_projector
    info = TextHeadInfo("shapes_tiny", meta["clip_name"], None, p.clip_dim, p.token_dim, p.num_tokens, p.hidden_dim,
                        recipe=str(meta.get("training", {}).get("text_head_recipe", "text")),
                        extra={"text_encoder": "fine-tuned: its weights are the text_encoder.clip.* tensors of "
                                               "model.safetensors", "unpacked_from": str(bundle)},
                        word_dim=p.word_dim, word_heads=p.word_heads, locator_dim=p.locator_dim,
                        locator_kind=p.locator_kind, locator_appearance=p.locator_appearance,
                        locator_factors=p.locator_factors)
    save_text_head(out_dir / "text_head.safetensors", p, info)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", type=Path)
    parser.add_argument("--text", type=Path)
    parser.add_argument("--clip", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--text-options", default="{}", help='default TextOptions as JSON, e.g. {"grounding": false}')
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
