"""A fitted normative model on disk: `model.npz` (arrays) + `model.json` (what a person reads).

model.json carries the design, feature names, sites, fitted covariate range, options, the DP clip
norms and the sha256 of model.npz; loading refuses a version it does not know, an npz that does
not match its json, and arrays the model does not declare (or a required one missing). Which
fitted attributes go in which file is declared once, on `NormativeModel`'s fields. Both files are
written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ndae.errors import NdaeError
from ndae.io import atomic_write_bytes, atomic_write_json, finite_or_null
from ndae.normative.design import DesignSpec

if TYPE_CHECKING:
    from ndae.normative.model import NormativeModel

MODEL_VERSION = 1


def save_model(model: "NormativeModel", directory: str | Path) -> Path:
    """Write `model.npz` and `model.json` of a fitted model to `directory`."""
    directory = Path(directory)
    # in declaration order (the order inside model.npz); an optional array that is None is left out
    arrays = {name: getattr(model, name) for name in type(model).fitted_fields("npz")
              if getattr(model, name) is not None or name not in type(model).optional_fields()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    payload = buffer.getvalue()
    atomic_write_bytes(directory / "model.npz", payload)
    atomic_write_json(
        directory / "model.json",
        {
            "kind": "ndae normative model (Bayesian linear, random site intercept)",
            "version": MODEL_VERSION,
            "design": model.design.to_dict(),
            "design_columns": model.design.column_names,
            "feature_names": model.feature_names,
            "n_features": len(model.feature_names),
            "n_controls": model.n_controls,
            "sites": {name: float(n) for name, n in zip(model.site_names, model.site_n)},
            "covariate_range": {
                column: [finite_or_null(low), finite_or_null(high)]
                for column, low, high in zip(
                    model.design.continuous_columns, model.covariate_min, model.covariate_max
                )
            },
            "prior_precision": model.prior_precision,
            "site_effects": model.site_effects,
            "n_iterations": model.n_iterations,
            "site_column": model.site_column,
            "clip": None if model.latent_clip is None else {
                "covariate": model.covariate_clip, "latent": model.latent_clip},
            "model_npz_sha256": hashlib.sha256(payload).hexdigest(),
        },
    )
    return directory


def load_model(cls: type["NormativeModel"], directory: str | Path) -> "NormativeModel":
    """The model `save_model` wrote to `directory`, as an instance of `cls`."""
    directory = Path(directory)
    json_path, npz_path = directory / "model.json", directory / "model.npz"
    for path in (json_path, npz_path):
        if not path.exists():
            raise NdaeError(f"normative model file not found: {path}")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as error:
        raise NdaeError(f"{json_path} is not valid JSON: {error}") from error
    if meta.get("version") != MODEL_VERSION:
        raise NdaeError(
            f"{json_path}: model version {meta.get('version')!r} is not supported "
            f"(expected {MODEL_VERSION})"
        )
    payload = npz_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != meta.get("model_npz_sha256"):
        raise NdaeError(f"{npz_path} does not match {json_path} (sha256 differs)")
    model = cls(
        design=DesignSpec.from_dict(meta["design"]),
        prior_precision=meta["prior_precision"],
        site_effects=meta["site_effects"],
        n_iterations=meta["n_iterations"],
        site_column=meta["site_column"],
    )
    declared = cls.fitted_fields("npz")
    with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
        unknown = [key for key in arrays.files if key not in declared]
        if unknown:
            raise NdaeError(f"{npz_path.name}: {unknown[:5]} are not arrays of a normative model")
        missing = [key for key in declared if key not in arrays.files and key not in cls.optional_fields()]
        if missing:
            raise NdaeError(f"{npz_path.name}: no {missing[0]!r} array")
        values = {key: arrays[key] if key in arrays.files else None for key in declared}
    clip = meta.get("clip") or {}
    values.update(
        site_names=list(meta["sites"]),
        n_controls=float(meta["n_controls"]),
        covariate_clip=None if clip.get("covariate") is None else float(clip["covariate"]),
        latent_clip=None if clip.get("latent") is None else float(clip["latent"]),
    )
    model.feature_names = list(meta["feature_names"])
    model._set_fitted(values)
    return model
