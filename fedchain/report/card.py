"""A model card: what a federation's model is, where it came from and who made it.

:func:`compute_card` (pure) takes the report of the run (:func:`fedchain.report.build.build_report`,
so every stake, reward and verdict is the one the report shows, from the same replay of the
verified ledger) and one model version of its lineage, and returns a JSON-ready dict:

* the model: architecture, fine-tuning mode and LoRA rank, the base's hash, source and
  licence (the genesis's model record, which every registration signed);
* the version: its round, block and hash; an export adds its files and their SHA-256;
* the rules: aggregation, contribution method, payout rule, differential privacy when on;
* the data: each genesis participant's dataset commitment and example count;
* the contributors: rewards and their share of all rewards paid;
* accuracy, as the coordinator reported it in ``metrics.json`` (not on the ledger);
* the ledger head and the verification verdict.

:func:`render_card_markdown` writes it for people; names and reasons from the run directory are
escaped, so that a participant's name cannot inject Markdown or HTML into the card.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fedchain import __version__

__all__ = ["CARD_FORMAT", "compute_card", "find_version", "render_card_markdown"]

CARD_FORMAT = "fedchain-model-card/1"
ACCURACY_SOURCE = (
    "the coordinator's evaluation on the test split, from metrics.json (not on the ledger)"
)


def find_version(report: Mapping[str, Any], round_: int | None = None) -> Mapping[str, Any] | None:
    """The report's lineage entry of ``round_`` (its last registration), or the latest
    version; None when the lineage has none."""
    lineage = [m for m in report.get("lineage") or () if round_ is None or m["round"] == round_]
    return lineage[-1] if lineage else None


def compute_card(
    report: Mapping[str, Any],
    version: Mapping[str, Any] | None = None,
    files: Sequence[Mapping[str, Any]] = (),
    model_input: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of ``version`` (a lineage entry of ``report``; default the latest) and, for an
    export, its ``files`` (``{"name", "sha256", "bytes", "contents"}``) and the input its model
    takes (``{"shape", "classes", "value_max"}``: one example's shape, the classes in logit
    order, what raw values are divided by; the report alone does not know it)."""
    version = version if version is not None else find_version(report)
    run = report.get("run") or {}
    rules = run.get("rules") or {}
    verification = report.get("verification") or {}
    totals = report.get("totals") or {}
    return {
        "format": CARD_FORMAT,
        "generator": f"fedchain {__version__}",
        "run_id": run.get("run_id", ""),
        "genesis_hash": run.get("genesis_hash"),
        "model": run.get("model"),
        "version": _version_json(report, version),
        "files": [dict(f) for f in files],
        "input": None if model_input is None else dict(model_input),
        "rules": {
            "aggregation_rule": rules.get("aggregation_rule"),
            "aggregation_params": rules.get("aggregation_params"),
            "contribution_method": rules.get("contribution_method"),
            "reward_per_round": rules.get("reward_per_round"),
            "payout_min_score": rules.get("payout_min_score"),
            "score_debt_decay_bps": rules.get("score_debt_decay_bps"),
            "harm_debt_decay_bps": rules.get("harm_debt_decay_bps"),
            "min_stake": rules.get("min_stake"),
            "slash_bps": rules.get("slash_bps"),
            "differential_privacy": _privacy_json(report.get("privacy")),
            "model_access": list(rules.get("model_access") or ()),
        },
        "recipient": None,
        "datasets": list(run.get("datasets") or ()),
        "examples": sum(d["num_examples"] for d in run.get("datasets") or ()),
        "contributors": _contributors_json(report.get("participants") or ()),
        "rewards_paid": totals.get("rewards_paid"),
        "rounds": totals.get("rounds", 0),
        "accuracy": {
            "version": _version_accuracy(report, version),
            "final": totals.get("final_accuracy"),
            "best": totals.get("best_accuracy"),
            "source": ACCURACY_SOURCE,
        },
        "ledger": {
            "head_height": verification.get("head_height"),
            "head_hash": verification.get("head_hash"),
        },
        "verification": {
            "verdict": verification.get("verdict", "FAILED"),
            "first_failure": verification.get("first_failure"),
        },
    }


def _version_json(
    report: Mapping[str, Any], version: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    if version is None:
        return None
    latest = find_version(report)
    return {
        "round": version["round"],
        "height": version["height"],
        "model_hash": version["model_hash"],
        "rule": version.get("rule"),
        "latest": latest is not None and latest["model_hash"] == version["model_hash"],
    }


def _version_accuracy(report: Mapping[str, Any], version: Mapping[str, Any] | None) -> Any:
    if version is None:
        return None
    if version["round"] == 0:
        return (report.get("initial_model") or {}).get("accuracy")
    found = [r for r in report.get("rounds") or () if r["round"] == version["round"]]
    return found[-1]["accuracy"] if found else None


def _privacy_json(privacy: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The report's privacy section without its per-client detail (None: DP off)."""
    if not privacy:
        return None
    return {k: v for k, v in privacy.items() if k != "clients"}


def _contributors_json(participants: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each participant's rewards and its share of all rewards paid (None when none was paid),
    in the report's order."""
    paid = sum(p["rewards"] for p in participants)
    return [
        {
            "name": p["name"],
            "fingerprint": p["fingerprint"],
            "public_key": p["public_key"],
            "num_examples": p["num_examples"],
            "updates": p["updates"],
            "rewards": p["rewards"],
            "reward_share": p["rewards"] / paid if paid else None,
            "contribution": p["contribution"],
            "epsilon": p.get("epsilon"),
        }
        for p in participants
    ]


# --------------------------------------------------------------------------------------------------
# Markdown

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
"""What is special inside a line (every untrusted text in the card is written after other text
on its line or inside a table cell, so block syntax such as ``#`` or ``-`` has no effect)."""


_DASH = "\u2013"  # an en dash: "no value"


def _md(value: Any) -> str:
    """``value`` as inert Markdown text: HTML escaped, Markdown punctuation backslashed, line
    breaks and other control characters as spaces."""
    text = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _code(value: Any) -> str:
    """``value`` in a code span, whose text Markdown shows as it is (backticks and control
    characters dropped, so that nothing leaves the span)."""
    if value is None:
        return _DASH
    return "`" + "".join(c for c in str(value) if c != "`" and 32 <= ord(c) != 127) + "`"


def _pct(value: float | None) -> str:
    return _DASH if value is None else f"{100 * value:.2f} %"


def render_card_markdown(card: Mapping[str, Any]) -> str:
    """``card.md``: the card for people (the JSON holds the same facts, unrounded)."""
    lines = [f"# Model card: {_md(card['run_id'])}", ""]
    lines += _model_lines(card) + _input_lines(card) + _version_lines(card) + _rules_lines(card)
    lines += _data_lines(card) + _contributor_lines(card) + _ledger_lines(card)
    lines += ["", f"_{card['generator']} · {CARD_FORMAT}_", ""]
    return "\n".join(lines)


def _model_lines(card: Mapping[str, Any]) -> list[str]:
    model = card.get("model")
    if not model:
        return ["## Model", "", "The ledger names no model (a ledger made without one).", ""]
    rank = f", rank {model['lora_rank']}" if model["finetune"] == "lora" else ""
    lines = [
        "## Model",
        "",
        f"- architecture: {_code(model['architecture'])}",
        f"- fine-tuning: {_md(model['finetune'])}{rank}; {model['trainable']} tensors trained",
    ]
    if model["base_hash"] is None:
        lines.append("- base: none (trained from its seeded initialisation)")
    else:
        lines += [
            f"- base hash: {_code(model['base_hash'])}",
            f"- base source: {_md(model['base_source'] or 'not stated')}",
            f"- base licence: {_md(model['base_licence'] or 'not stated')}",
        ]
    return [*lines, ""]


def _input_lines(card: Mapping[str, Any]) -> list[str]:
    given = card.get("input")
    if not given:
        return []
    shape = " x ".join(str(d) for d in given["shape"])
    scale = (
        "token ids and an attention mask, as the tokenizer gives them"
        if given["value_max"] is None
        else f"raw values divided by {given['value_max']:g} (to [0, 1])"
    )
    classes = ", ".join(_md(c) for c in given["classes"])
    return [
        "## Input",
        "",
        f"- one example: {shape}; {scale}",
        f"- {len(given['classes'])} classes, in logit order: {classes}",
        "",
    ]


def _version_lines(card: Mapping[str, Any]) -> list[str]:
    version, accuracy = card.get("version"), card["accuracy"]
    if version is None:
        return ["## Version", "", "No model version is registered.", ""]
    what = (
        "the initial model" if version["round"] == 0 else f"the model of round {version['round']}"
    )
    lines = [
        "## Version",
        "",
        f"- {what} (block {version['height']}{', the latest' if version['latest'] else ''})",
        f"- model hash: {_code(version['model_hash'])}",
        f"- accuracy of this version: {_pct(accuracy['version'])} (final "
        f"{_pct(accuracy['final'])}, best {_pct(accuracy['best'])}; {accuracy['source']})",
    ]
    lines += [
        f"- file {_code(f['name'])}: {f['contents']}, sha256 {_code(f['sha256'])}"
        for f in card.get("files") or ()
    ]
    return [*lines, ""]


def _rules_lines(card: Mapping[str, Any]) -> list[str]:
    rules = card["rules"]
    params = ", ".join(f"{k}={v}" for k, v in sorted((rules["aggregation_params"] or {}).items()))
    lines = [
        "## Rules",
        "",
        f"- aggregation: {_md(rules['aggregation_rule'])}{f' ({_md(params)})' if params else ''}",
        f"- contribution method: {_md(rules['contribution_method'])}",
        f"- payout: {rules['reward_per_round']} per round, all of the pool once a round's "
        f"payable scores reach {rules['payout_min_score']} score quanta",
    ]
    if rules.get("score_debt_decay_bps") is not None:
        decay = rules["score_debt_decay_bps"]
        harm = rules.get("harm_debt_decay_bps", decay)  # before format 7: one rate for both
        lines.append(
            "- score debt: a client's negative scores are repaid by its positive ones before "
            "they are paid; harm (the part of a score below -0.01) is "
            + ("never forgiven" if harm == 0 else f"{harm / 100:g} % forgiven a round")
            + f", the rest {decay / 100:g} % a round"
        )
    dp = rules.get("differential_privacy")
    if dp:
        lines.append(
            f"- differential privacy: {_md(dp['mode'])} level, noise multiplier "
            f"{dp['noise_multiplier']}, clip {dp['clip_norm']}, delta {dp['delta']}, "
            f"epsilon at most {dp['max_epsilon']}"
        )
    else:
        lines.append("- differential privacy: off")
    access = rules.get("model_access") or ()
    lines.append(
        "- who may be given these models: the federation's participants"
        + (
            f" and {len(access)} other keys ({_md(', '.join(k[:16] for k in access))})"
            if access
            else ""
        )
    )
    if card.get("recipient"):
        lines.append(f"- exported for: {_md(card['recipient'][:16])}")
    return [*lines, ""]


def _data_lines(card: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Data",
        "",
        f"{len(card['datasets'])} data sets at genesis, {card['examples']} examples; each "
        "commitment is the hash its holder signed when it registered.",
        "",
        "| participant | examples | dataset commitment |",
        "|---|---:|---|",
    ]
    names = {c["public_key"]: c["name"] for c in card["contributors"]}
    lines += [
        f"| {_md(d['name'] or names.get(d['public_key']) or d['public_key'][:16])} | "
        f"{d['num_examples']} | "
        f"{_code(d['dataset_hash'])} |"
        for d in card["datasets"]
    ]
    return [*lines, ""]


def _contributor_lines(card: Mapping[str, Any]) -> list[str]:
    private = bool(card["rules"].get("differential_privacy"))
    rounds = card["rounds"]
    lines = [
        "## Contributors",
        "",
        f"{rounds} round{'' if rounds == 1 else 's'} on the ledger; "
        f"{card['rewards_paid'] or 0} rewards paid.",
        "",
        "| participant | fingerprint | updates | rewards | share |"
        + (" epsilon |" if private else ""),
        "|---|---|---:|---:|---:|" + ("---:|" if private else ""),
    ]
    for c in card["contributors"]:
        cells = [_md(c["name"]), _code(c["fingerprint"]), str(c["updates"]), str(c["rewards"])]
        cells.append(_pct(c["reward_share"]))
        if private:
            cells.append(_DASH if c["epsilon"] is None else f"{c['epsilon']:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _ledger_lines(card: Mapping[str, Any]) -> list[str]:
    ledger, verification = card["ledger"], card["verification"]
    verdict = verification["verdict"]
    if verification["first_failure"]:
        verdict += f": {_md(verification['first_failure'])}"
    return [
        "## Ledger",
        "",
        f"- genesis: {_code(card['genesis_hash'])}",
        f"- head: block {ledger['head_height']}, {_code(ledger['head_hash'])}",
        f"- verification: {verdict}",
    ]
