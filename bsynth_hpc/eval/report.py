"""Evaluation outputs: metrics.json (machine), metrics.md (tables to paste), per_volume.csv.

Both files open with the provenance (command, time, versions, inputs, weights with their
SHA-256 and how it was verified); a run with random-initialised feature networks says so in the
JSON (``random_features: true`` and ``warning``) and in a banner at the top of the Markdown.
Non-finite values are written as JSON null (NaN) or the string "inf" (a perfect reconstruction's
PSNR).
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..weights import WeightsInfo

RANDOM_WARNING = ("random-initialised feature networks (--allow-random-features): a smoke test of the pipeline; "
                  "these numbers are not an evaluation and must not be reported")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(arguments: Mapping[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    """Command line, resolved arguments, UTC time, host and package versions."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "arguments": {k: v for k, v in (arguments or {}).items() if not callable(v)},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(), "device": device,
        "versions": {p: _version(p) for p in ("bsynth_hpc", "torch", "monai", "lpips", "torchvision", "numpy")},
    }


def weights_block(infos: Sequence[WeightsInfo]) -> tuple[list[dict[str, Any]], bool]:
    """Weights provenance and whether any network was random-initialised."""
    return [w.as_dict() for w in infos], any(w.random for w in infos)


def jsonable(value: Any) -> Any:
    """Numpy scalars/arrays -> Python; NaN -> None; +-inf -> "inf"/"-inf"; tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(result: Mapping[str, Any], path: Path) -> Path:
    _atomic_write(path, json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------- Markdown
def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return "∞" if value == "inf" else value
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return {"fid": f"{value:.6g}", "mmd": f"{value:.6g}", "ssim": f"{value:.4f}", "psnr": f"{value:.2f}",
            "mse": f"{value:.6f}", "int": f"{int(value)}"}[kind]


def _mean_std(summary: Mapping[str, Any] | None, kind: str) -> str:
    if not summary or summary.get("mean") is None:
        return "–"
    mean = _fmt(summary["mean"], kind)
    return mean if summary.get("std") is None else f"{mean} ± {_fmt(summary['std'], kind)}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _header(title: str, result: Mapping[str, Any]) -> list[str]:
    lines = [f"# {title}", ""]
    if result.get("random_features"):
        lines += [f"> **SMOKE TEST — {RANDOM_WARNING}.**", ""]
    prov = result.get("provenance", {})
    lines += [f"Created {prov.get('created_utc', '?')} by `{prov.get('command', '?')}` "
              f"(device {prov.get('device', '?')}).", ""]
    return lines


def _inputs_lines(inputs: Mapping[str, Any]) -> list[str]:
    out = []
    for name, d in inputs.items():
        if isinstance(d, Mapping) and "path" in d:
            split = f", split {d['split']}" if d.get("split") else ""
            mods = ", ".join(f"{k} {v}" for k, v in d.get("modalities", {}).items()) or "modality unknown"
            out.append(f"- {name}: `{d['path']}` ({d.get('kind')}{split}; {d.get('n')} volumes: {mods}; "
                       f"shape {tuple(d.get('shape', ()))})")
        else:
            out.append(f"- {name}: {d}")
    return out


def _weights_lines(weights: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for w in weights:
        if w.get("random"):
            out.append(f"- {w['network']}: **random initialisation** (smoke test)")
        else:
            out.append(f"- {w['network']}: `{w['path']}` sha256 `{w['sha256']}` ({w['verified']})")
    return out


SMALL_N = 100
"""Below this many volumes per side, FID (and to a lesser degree MMD) is dominated by estimator bias."""


def small_n_warning(pooled: Mapping[str, Any]) -> list[str]:
    """A warning line when FID comes from few volumes (its bias grows like 1/n; seeds report hundreds)."""
    n = [int(v) for v in (pooled.get("n_real"), pooled.get("n_fake")) if v is not None]
    if pooled.get("fid") is None or not n or min(n) >= SMALL_N:
        return []
    return [f"**Warning: FID/MMD from {pooled.get('n_real')} real and {pooled.get('n_fake')} generated volumes. "
            f"Below ~{SMALL_N} per side FID is dominated by its small-sample bias (it falls as n grows even for "
            "the same generator): compare only runs with equal n, not with published values.**", ""]


def synth_markdown(result: Mapping[str, Any], figures: Sequence[str] = ()) -> str:
    """Tables in the layout of seed 003 Tables 4 and 12-15 (pooled and per modality), per class."""
    lines = _header("bsynth eval synth — generated vs real", result)
    lines += ["## Inputs", "", *_inputs_lines(result.get("inputs", {})), ""]
    has2d = result.get("settings", {}).get("slice2d") is not None
    headers = ["Set", "FID ↓", "MMD ↓", "MS-SSIM gen ↓", "MS-SSIM real", "n real", "n gen"]
    if has2d:
        headers.append("slice FID ↓")

    def row(name: str, g: Mapping[str, Any]) -> list[str]:
        r = [name, _fmt(g.get("fid"), "fid"), _fmt(g.get("mmd"), "mmd"), _fmt(g.get("ms_ssim"), "ssim"),
             _fmt(g.get("ms_ssim_real"), "ssim"), _fmt(g.get("n_real"), "int"), _fmt(g.get("n_fake"), "int")]
        if has2d:
            r.append(_fmt(g.get("fid2d"), "fid"))
        return r

    pooled = result["pooled"]
    lines += small_n_warning(pooled)
    label = "Pooled" + (f" ({', '.join(pooled['modalities'])})" if pooled.get("modalities") else "")
    rows = [row(label, pooled)] + [row(m, g) for m, g in result.get("by_modality", {}).items()]
    lines += ["## By modality (seed 003 Tables 4, 12–15)", "", *_table(headers, rows), ""]
    if result.get("by_class"):
        lines += ["## By class", "", *_table(headers, [row(c, g) for c, g in result["by_class"].items()]), ""]
    s = result.get("settings", {})
    mmd_s, ms = s.get("mmd", {}), s.get("ms_ssim", {}).get("settings", {})
    lines += [
        "FID and MMD: MedicalNet feature space (seed 003 §2.5.7), lower is closer to the real distribution. "
        "MS-SSIM gen: mean MS-SSIM over random pairs of generated volumes (diversity; lower is more diverse); "
        "MS-SSIM real: the same over real pairs, for reference. –: not computable (fewer than 2 volumes, or "
        "no pair, in a set).", "",
        "## Settings", "",
        f"- features: {s.get('features', {}).get('network')}, {s.get('features', {}).get('dim')}-d, "
        f"{s.get('features', {}).get('input')} input, {s.get('features', {}).get('pooling')} pooling",
        f"- MMD: {mmd_s.get('estimator')}; {mmd_s.get('kernel')} kernel, sigma = {mmd_s.get('sigma')} "
        f"{mmd_s.get('ratios')}, weights {mmd_s.get('weights')}",
        f"- MS-SSIM: up to {s.get('n_pairs_requested')} pairs per group, seed {s.get('seed')}; window "
        f"{ms.get('kernel_size')}, sigma {ms.get('kernel_sigma')}, {len(ms.get('weights', ()))} scales, data range 1",
    ]
    if has2d:
        lines.append(f"- slice FID: InceptionV3 pool3 on all {s['slice2d']['plane']} slices (seeds 000, 001)")
    lines += ["", "## Weights", "", *_weights_lines(result.get("weights", [])), ""]
    for note in result.get("notes", []):
        lines.append(f"- note: {note}")
    lines += _figures_lines(figures)
    return "\n".join(lines) + "\n"


def recon_markdown(result: Mapping[str, Any], figures: Sequence[str] = (), max_volume_rows: int = 60) -> str:
    """Per-modality and pooled table in the layout of seed 003 Tables 3 and 8-11, then per volume."""
    lines = _header("bsynth eval recon — reconstruction fidelity", result)
    lines += ["## Inputs", "", *_inputs_lines(result.get("inputs", {})), ""]
    pooled = result["pooled"]
    extra = [k for k in ("fid", "mmd", "fid2d") if k in pooled]
    names = {"fid": "FID ↓", "mmd": "MMD ↓", "fid2d": "slice FID ↓"}
    headers = ["Modality", "n", "LPIPS ↓", "SSIM ↑", "MS-SSIM ↑", "PSNR ↑", "MSE ↓", "SSIM 2D tri-planar ↑",
               *[names[k] for k in extra]]

    def row(name: str, g: Mapping[str, Any]) -> list[str]:
        return [name, _fmt(g.get("n"), "int"), _mean_std(g.get("lpips"), "ssim"), _mean_std(g.get("ssim"), "ssim"),
                _mean_std(g.get("ms_ssim"), "ssim"), _mean_std(g.get("psnr"), "psnr"), _mean_std(g.get("mse"), "mse"),
                _mean_std(g.get("ssim_triplanar"), "ssim"),
                *[_fmt(g.get(k), "fid") for k in extra]]

    rows = [row(m, g) for m, g in result.get("by_modality", {}).items()] + [row("Pooled", pooled)]
    lines += ["## Per modality and pooled (seed 003 Tables 3, 8–11; mean ± std over volumes)", "",
              *_table(headers, rows), ""]
    per_volume = result.get("per_volume", [])
    lines += ["## Per volume", ""]
    if len(per_volume) <= max_volume_rows:
        vh = ["Volume", "Modality", "LPIPS", "SSIM", "MS-SSIM", "PSNR", "MSE", "SSIM 2D"]
        vrows = [[r["volume_id"], r.get("modality") or "–", _fmt(r.get("lpips"), "ssim"), _fmt(r.get("ssim"), "ssim"),
                  _fmt(r.get("ms_ssim"), "ssim"), _fmt(r.get("psnr"), "psnr"), _fmt(r.get("mse"), "mse"),
                  _fmt(r.get("ssim_triplanar"), "ssim")] for r in per_volume]
        lines += [*_table(vh, vrows), ""]
    else:
        lines += [f"{len(per_volume)} volumes: see per_volume.csv.", ""]
    s = result.get("settings", {})
    ss, ms = s.get("ssim", {}), s.get("ms_ssim", {})
    lines += [
        "## Settings", "",
        f"- space: {s.get('space')}; SSIM window {ss.get('kernel_size')} (sigma {ss.get('kernel_sigma')}); MS-SSIM "
        f"window {ms.get('kernel_size')}, {len(ms.get('weights', ()))} scales",
        f"- LPIPS: {s.get('lpips') or 'not computed'}; tri-planar: {s.get('triplanar', {}).get('per_plane')} "
        "slices per plane",
    ]
    if s.get("feature_metrics"):
        lines.append(f"- feature metrics: {s['feature_metrics']}")
    lines += ["", "## Weights", "", *_weights_lines(result.get("weights", [])), ""]
    lines += _figures_lines(figures)
    return "\n".join(lines) + "\n"


def _figures_lines(figures: Sequence[str]) -> list[str]:
    if not figures:
        return []
    return ["", "## Figures", "", *(f"![{Path(f).stem}]({Path(f).name})" for f in figures), ""]


def write_per_volume_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: jsonable(r.get(k)) for k in columns})
    return path


def write_report(result: dict[str, Any], out_dir: str | Path, figures: Sequence[str] = ()) -> dict[str, Path]:
    """Write metrics.json, metrics.md (and per_volume.csv for recon) into ``out_dir``; the in-memory
    ``examples`` volumes a protocol returns for the figures are not written."""
    result = {k: v for k, v in result.items() if k != "examples"}
    out = Path(out_dir)
    paths = {"json": write_json(result, out / "metrics.json")}
    if result.get("protocol") == "recon":
        md = recon_markdown(result, figures)
        paths["csv"] = write_per_volume_csv(result.get("per_volume", []), out / "per_volume.csv")
    else:
        md = synth_markdown(result, figures)
    _atomic_write(out / "metrics.md", md)
    paths["markdown"] = out / "metrics.md"
    return paths
