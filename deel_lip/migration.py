"""Migration from deel-lip (Keras 3 branch): registered names and ``.keras`` files.

deel-lip registered its serialisable classes under the package ``deel-lip`` (registered
names ``"deel-lip>SpectralDense"``, module ``deel.lip.layers.dense``); deel_lip uses
``"deel_lip>SpectralDense"``. Importing this module:

* registers every deel_lip serialisable class a second time under deel-lip's name, in
  Keras's global custom objects only (`register_deel_lip_names`): a configuration or a
  ``.keras`` file naming ``deel-lip>X`` deserialises to ``deel_lip``'s ``X``, while
  deel_lip keeps saving under its own names;
* provides `convert_deel_lip_config` (registered names, modules and the configuration
  keys deel-lip spelled differently) and `load_deel_lip_model`, which rewrites a
  deel-lip ``.keras`` archive (configuration and the weights of constrained layers,
  whose persisted state differs) and loads it with `keras.saving.load_model`.

See the "From deel-lip" documentation page for everything that maps where.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
import zipfile

import keras
import numpy as np
from keras.src.utils import naming  # the names Keras gives layers in weight files

# Import every module that registers serialisable classes (never xai: optional extra).
from deel_lip import (  # noqa: F401
    callbacks,
    constraints,
    initializers,
    layers,
    losses,
    metrics,
    model,
    regularizers,
)
from deel_lip.layers import depthwise  # noqa: F401
from deel_lip.layers.base import ConstrainedKernel

__all__ = [
    "DEEL_LIP_PACKAGE",
    "OUR_PACKAGE",
    "CONFIG_KEY_RENAMES",
    "CONFIG_KEY_DROPS",
    "register_deel_lip_names",
    "convert_deel_lip_config",
    "load_deel_lip_model",
]

#: Package under which deel-lip registered its classes (``deel-lip>ClassName``).
DEEL_LIP_PACKAGE = "deel-lip"
#: Package under which deel_lip registers its classes (``deel_lip>ClassName``).
OUR_PACKAGE = "deel_lip"

#: Configuration keys deel-lip spelled differently: ``{class name: {theirs: ours}}``.
CONFIG_KEY_RENAMES: dict[str, dict[str, str]] = {
    "LorthRegularizer": {"flag_deconv": "conv_transpose"},
}

#: Keys deel-lip wrote that deel_lip's class fixes itself: ``{class name: keys}``.
#: (deel-lip's ``GroupSort2`` and ``FullSort`` saved the group size ``n`` of their parent
#: class; here it is implied by the class: 2, or the whole channel axis.)
CONFIG_KEY_DROPS: dict[str, tuple[str, ...]] = {
    "GroupSort2": ("n",),
    "FullSort": ("n",),
}

_ARCHIVE_CONFIG = "config.json"
_ARCHIVE_WEIGHTS = "model.weights.h5"


def register_deel_lip_names() -> dict[str, type]:
    """Register every ``deel_lip>X`` class also as ``deel-lip>X``; return the new names.

    The aliases go into `keras.saving.get_custom_objects` only, so
    `keras.saving.get_registered_name` of a deel_lip class stays ``deel_lip>X``
    (files saved by deel_lip keep deel_lip's names). Idempotent.

    Returns:
        ``{"deel-lip>X": class}`` for every alias registered (also the existing ones).
    """
    registry = keras.saving.get_custom_objects()
    prefix = f"{OUR_PACKAGE}>"
    aliases = {
        f"{DEEL_LIP_PACKAGE}>{name[len(prefix) :]}": obj
        for name, obj in list(registry.items())
        if name.startswith(prefix)
    }
    registry.update(aliases)
    return aliases


def _our_class(class_name: str):
    return keras.saving.get_custom_objects().get(f"{OUR_PACKAGE}>{class_name}")


def _convert_object(node: dict, renamed: list) -> dict:
    registered = node.get("registered_name")
    if not (isinstance(registered, str) and registered.startswith(f"{DEEL_LIP_PACKAGE}>")):
        return node
    class_name = registered.split(">", 1)[1]
    cls = _our_class(class_name)
    if cls is None:
        raise ValueError(
            f"deel-lip class {class_name!r} (registered_name={registered!r}) has no deel_lip "
            "counterpart; see the 'From deel-lip' documentation page."
        )
    node["registered_name"] = f"{OUR_PACKAGE}>{class_name}"
    node["module"] = cls.__module__
    node["class_name"] = class_name
    config = node.get("config")
    if isinstance(config, dict):
        for theirs, ours in CONFIG_KEY_RENAMES.get(class_name, {}).items():
            if theirs in config:
                config[ours] = config.pop(theirs)
                renamed.append(f"{class_name}.{theirs} -> {ours}")
        for key in CONFIG_KEY_DROPS.get(class_name, ()):
            config.pop(key, None)
    return node


def convert_deel_lip_config(config):
    """Rewrite a deel-lip (Keras 3) serialised configuration for deel_lip.

    Every object whose ``registered_name`` is ``deel-lip>X`` gets ``deel_lip>X`` and
    deel_lip's module, the keys of `CONFIG_KEY_RENAMES` are renamed and those of
    `CONFIG_KEY_DROPS` removed. Other objects
    (plain Keras ones) are left unchanged. The input is not modified.

    Args:
        config: a dict (or list) as found in a ``.keras`` archive's ``config.json``.

    Returns:
        The converted copy.

    Raises:
        ValueError: if a ``deel-lip>X`` class has no deel_lip counterpart.
    """
    if not isinstance(config, (dict, list)):
        raise TypeError(f"config must be a dict or a list, received: {type(config).__name__}")
    renamed: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            node = _convert_object(node, renamed)
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(copy.deepcopy(config))


# ------------------------------------------------------------------ weights


def _read_weights(raw: bytes) -> dict[str, list[np.ndarray]]:
    """``{layer path: [arrays in vars order]}`` of a Keras 3 ``model.weights.h5``."""
    import h5py

    groups: dict[str, list[np.ndarray]] = {}
    with h5py.File(io.BytesIO(raw), "r") as h5:

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and name.endswith("/vars") or name == "vars":
                keys = sorted(obj.keys(), key=int)
                groups[name[: -len("vars")].rstrip("/")] = [np.asarray(obj[k]) for k in keys]

        h5.visititems(visit)
    return groups


def _layer_paths(root, prefix: str = "layers") -> dict:
    """``{weights-file path: layer}`` as Keras names them when saving.

    Keras addresses a layer of a ``layers`` list by its snake-cased class name, made
    unique within the list (``spectral_dense``, ``spectral_dense_1``, ...), not by
    ``layer.name``; nested models continue the path.
    """
    paths = {}
    used: dict[str, int] = {}
    for layer in getattr(root, "layers", []):
        base = naming.to_snake_case(type(layer).__name__)
        used[base] = used.get(base, -1) + 1
        path = f"{prefix}/{base}" if used[base] == 0 else f"{prefix}/{base}_{used[base]}"
        paths[path] = layer
        paths.update(_layer_paths(layer, f"{path}/layers"))
    return paths


def _match_state(layer, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Values for the saved variables of ``layer`` from deel-lip's arrays of that layer.

    deel-lip's constrained layers store ``kernel, [bias], u, sigma, wbar``; deel_lip's
    store ``kernel, [bias], <normalisation state>, constrained_kernel`` (what its
    `save_own_variables` writes). Kernel and bias come first in both; the
    power-iteration vector and the constrained kernel are taken by shape; deel_lip state
    with no deel-lip counterpart keeps its initial value (the next training step or
    `condense` refreshes it).
    """
    store: dict = {}
    layer.save_own_variables(store)  # the saved variables, in the order Keras writes them
    ours = [store[str(i)] for i in range(len(store))]
    if len(ours) == len(arrays) and all(
        tuple(v.shape) == a.shape for v, a in zip(ours, arrays, strict=True)
    ):
        return arrays
    values = [np.asarray(keras.ops.convert_to_numpy(v)) for v in ours]
    names = [str(getattr(v, "path", getattr(v, "name", ""))).split("/")[-1] for v in ours]
    if names and not names[-1] and np.shape(ours[-1]) == np.shape(ours[0]):
        names[-1] = "constrained_kernel"  # deel_lip writes the cache last
    remaining = list(range(len(arrays)))
    for i, (variable, name) in enumerate(zip(ours, names, strict=True)):
        shape = tuple(np.shape(variable))
        candidates = [j for j in remaining if arrays[j].shape == shape]
        if not candidates:
            continue
        if name == "constrained_kernel":
            j = candidates[-1]  # deel-lip's wbar comes last
        elif name in ("kernel", "bias", "u") or i < 2:
            j = candidates[0]
        else:
            continue
        values[i] = arrays[j]
        remaining.remove(j)
    return values


def _convert_weights(raw: bytes, model_obj) -> bytes:
    import h5py

    groups = _read_weights(raw)
    buffer = io.BytesIO()
    with h5py.File(io.BytesIO(raw), "r") as src, h5py.File(buffer, "w") as dst:
        for key in src.keys():
            src.copy(src[key], dst, name=key)
        layers_by_path = _layer_paths(model_obj)
        for path, arrays in groups.items():
            layer = layers_by_path.get(path)
            if not isinstance(layer, ConstrainedKernel):
                continue
            values = _match_state(layer, arrays)
            group = dst[f"{path}/vars"]
            for key in list(group.keys()):
                del group[key]
            for i, value in enumerate(values):
                group.create_dataset(str(i), data=value)
    return buffer.getvalue()


def load_deel_lip_model(filepath, custom_objects=None, compile=True, safe_mode=True):  # noqa: A002
    """Load a ``.keras`` archive saved by deel-lip (Keras 3) as a deel_lip model.

    The configuration is converted with `convert_deel_lip_config`; the weights of
    constrained layers are re-laid out for deel_lip's state (see `_match_state`); the
    rewritten archive is then loaded by `keras.saving.load_model`. A deel_lip archive
    loads unchanged.

    Args:
        filepath: path of the ``.keras`` file.
        custom_objects, compile, safe_mode: as in `keras.saving.load_model`.

    Returns:
        The loaded model.

    Raises:
        ValueError: if ``filepath`` is not a ``.keras`` archive or names a deel-lip class
            that deel_lip lacks.
    """
    filepath = os.fspath(filepath)
    if not zipfile.is_zipfile(filepath):
        raise ValueError(f"filepath must be a .keras (zip) archive, received: {filepath!r}")
    with zipfile.ZipFile(filepath) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    if _ARCHIVE_CONFIG not in entries:
        raise ValueError(f"filepath {filepath!r} has no {_ARCHIVE_CONFIG}: not a .keras archive")
    config = convert_deel_lip_config(json.loads(entries[_ARCHIVE_CONFIG]))
    entries[_ARCHIVE_CONFIG] = json.dumps(config).encode()
    if _ARCHIVE_WEIGHTS in entries:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skeleton = keras.saving.deserialize_keras_object(
                config, custom_objects=custom_objects, safe_mode=safe_mode
            )
        entries[_ARCHIVE_WEIGHTS] = _convert_weights(entries[_ARCHIVE_WEIGHTS], skeleton)
    with tempfile.TemporaryDirectory() as folder:
        converted = os.path.join(folder, "converted.keras")
        with zipfile.ZipFile(converted, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
        return keras.saving.load_model(
            converted, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )


register_deel_lip_names()
