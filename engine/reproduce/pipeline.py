"""`reproduce`: a recipe folder -> checked recipe, data, stages run or skipped, manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from core.ownership import REPRODUCE, check_marker_file
from engine.reproduce.fingerprint import code_version, data_fingerprint
from engine.reproduce.manifest import build_manifest, export_checksums, write_manifest
from engine.reproduce.recipe import check_twin, load_recipe
from engine.reproduce.runner import SCRIPT_FILES, check_data, plan_stages, run_stages, submission_path
from engine.reproduce.twin_data import prepare_twin_data, twin_data_root


def reproduce(recipe_dir: Path | str, *, out: Path | str, data_root: Optional[str] = None, synthetic: bool = False,
              deterministic: bool = False, force: bool = False, echo: bool = True,
              scripts: Mapping[str, Path] = SCRIPT_FILES, say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the recipe of `recipe_dir` (its synthetic twin with `synthetic`) into `out`; return the manifest.

    Everything that can be wrong with the recipe, its configs or the data stops here with one
    ConfigError or DataError before any stage runs. With `synthetic` and no `data_root`, the twin's
    data is generated under `out`.
    """
    out = Path(out).expanduser().absolute()
    check_marker_file(out, REPRODUCE)  # its manifest.json is replaced at the end
    recipe = load_recipe(recipe_dir, synthetic=synthetic)
    if synthetic:
        check_twin(load_recipe(recipe_dir), recipe)
    generate = synthetic and not data_root
    root = twin_data_root(out) if generate else Path(data_root or "").expanduser().absolute()
    plans = plan_stages(recipe, out, root, deterministic=deterministic)  # every config checked first
    if generate:
        assert recipe.synthetic is not None
        root = prepare_twin_data(recipe.synthetic, out)
    root = check_data(recipe, str(root) if (generate or data_root) else None)
    say(f"recipe {recipe.name} ({recipe.file.name}): {recipe.description}")
    say(f"data: {recipe.data_format} at {root}; output: {out}")
    data = data_fingerprint(root)
    code = code_version()
    results = run_stages(recipe, plans, out, data_sha=data["sha256"], code=code, force=force,
                         deterministic=deterministic, echo=echo, scripts=scripts, say=say)
    stages = [{"name": plan.stage.name, "script": plan.stage.script, "config_file": str(plan.stage.config),
               "config": plan.config, "arguments": plan.arguments, "fingerprint": result.fingerprint,
               "ran": result.ran, "reason": result.reason, "seconds": round(result.seconds, 3),
               "export": export_checksums(plan.folder)}
              for plan, result in zip(plans, results, strict=True)]
    submission = submission_path(plans)
    manifest = build_manifest(recipe, synthetic=synthetic, deterministic=deterministic, data_root=root, data=data,
                              code=code, stages=stages, submission=submission)
    path = write_manifest(out, manifest)
    say(f"manifest: {path}")
    _report_check(manifest, say)
    return manifest


def _report_check(manifest: Dict[str, Any], say: Callable[[str], None]) -> None:
    submission, check = manifest["submission"], manifest["check"]
    if submission is None:
        say("no submission: the recipe has no eval stage")
        return
    say(f"submission: {submission['path']}\nsubmission sha256: {submission['sha256']}")
    if check["match"] is None:
        say(f"expected.json gives no {check['key']} to compare with")
    elif check["match"]:
        say(f"sha256 matches expected.json's {check['key']}")
    else:
        say(f"sha256 DIFFERS from expected.json's {check['key']} ({check['expected']})")
