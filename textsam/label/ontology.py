"""The labeller's vocabulary: the phrases typed to the model and the class each one is saved as.

An :class:`Ontology` maps phrase -> class (``{"a photo of a red car": "car"}``, as autodistill does); plain
classes map to themselves. Several phrases may share one class; the categories are the distinct classes in
order of first appearance (COCO ids 1..K in that order).

Sources (:func:`read_ontology`): ``"person,car"``, a list of names, a dict, a text file with one class per line
(blank lines and ``#`` comments skipped), or a JSON / YAML file holding a mapping or a list (YAML needs PyYAML;
JSON always works).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textsam.errors import InputError

__all__ = ["Ontology", "read_ontology", "read_names"]


@dataclass(frozen=True)
class Ontology:
    """``phrases[i]`` is typed to the model, its masks are saved as class ``classes[i]``."""

    phrases: tuple[str, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.phrases) != len(self.classes):
            raise InputError("an ontology needs one class per phrase")
        if not self.phrases:
            raise InputError("the vocabulary is empty: give at least one class, e.g. --classes 'person,car'")
        for phrase, cls in zip(self.phrases, self.classes):
            if not phrase.strip() or not cls.strip():
                raise InputError(f"the vocabulary has an empty class or phrase ({phrase!r} -> {cls!r}): remove it")
        seen: set[str] = set()
        for phrase in self.phrases:
            if phrase in seen:
                raise InputError(f"the class {phrase!r} is given twice: give each class once")
            seen.add(phrase)

    @property
    def categories(self) -> tuple[str, ...]:
        """The saved class names, distinct, in order of first appearance (COCO ids 1..K)."""
        return tuple(dict.fromkeys(self.classes))

    def class_of(self, phrase: str) -> str:
        return self.classes[self.phrases.index(phrase)]

    def as_dict(self) -> dict[str, str]:
        return dict(zip(self.phrases, self.classes))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str] | Sequence[str]) -> Ontology:
        """From ``{phrase: class}`` or a list of class names (each its own phrase)."""
        if isinstance(mapping, Mapping):
            pairs = [(_name(k, "phrase"), _name(v, "class")) for k, v in mapping.items()]
        else:
            pairs = [(_name(c, "class"),) * 2 for c in mapping]
        return cls(tuple(p for p, _ in pairs), tuple(c for _, c in pairs))


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"every {what} of the vocabulary must be a string, got {value!r}")
    return value.strip()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if dup is not None:
        raise InputError(f"the class {dup!r} is given twice: give each class once")
    return dict(pairs)


def _read_mapping_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the ontology file {path} ({err}): give a UTF-8 JSON or YAML file") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} is not valid JSON ({err}): write {{\"phrase\": \"class\", ...}}") from None
    try:
        import yaml
    except ImportError:
        raise InputError(f"reading {path} needs PyYAML (pip install pyyaml): or give the ontology as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path} is not valid YAML ({first}): write 'phrase: class' lines") from None


def read_ontology(source: str | Path | Mapping[str, str] | Sequence[str] | Ontology) -> Ontology:
    """An :class:`Ontology` from a comma list, a list, a mapping, or a file (see the module docstring).

    Raises:
        InputError: an empty or duplicated class, a missing or unreadable file, a file holding no class.
    """
    if isinstance(source, Ontology):
        return source
    if isinstance(source, Mapping):
        return Ontology.from_mapping(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        suffix = path.suffix.lower()
        if path.is_file():
            if suffix in (".json", ".yaml", ".yml"):
                data = _read_mapping_file(path)
                if isinstance(data, dict) and isinstance(data.get("ontology"), (dict, list)):
                    data = data["ontology"]
                if not isinstance(data, (dict, list)) or not data:
                    raise InputError(f"{path} holds no classes: write a mapping {{\"phrase\": \"class\"}} or a list")
                return Ontology.from_mapping(data)
            return Ontology.from_mapping(read_names(path))
        if isinstance(source, Path) or suffix in (".json", ".yaml", ".yml"):
            raise InputError(f"the classes file {path} does not exist: give a file, or the classes themselves, "
                             "e.g. --classes 'person,car'")
        return Ontology.from_mapping(read_names(source))
    return Ontology.from_mapping(list(source))


def read_names(source: str | Path, what: str = "class") -> list[str]:
    """The names of a ``--classes`` value: ``"a,b,c"``, or a text file with one name per line (blank lines and
    ``#`` comments skipped), in order, as given (duplicates kept: the caller decides). ``what`` names them in
    the messages ("class", "phrase").

    Raises:
        InputError: an empty name, a missing, unreadable or empty file.
    """
    path = Path(source)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read the classes file {path} ({err}): give a UTF-8 text file with one "
                             f"{what} per line") from None
        names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not names:
            raise InputError(f"the classes file {path} holds no {what}: write one {what} per line")
        return names
    text = str(source)
    if isinstance(source, Path) or path.suffix.lower() in (".txt", ".csv", ".lst") or "/" in text:
        raise InputError(f"the classes file {path} does not exist: give a file with one {what} per line, or the "
                         f"{what} names themselves, e.g. --classes 'person,car'")
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise InputError(f"--classes {text!r} has an empty {what}: give comma-separated names, e.g. "
                         "--classes 'person,car'")
    return names

