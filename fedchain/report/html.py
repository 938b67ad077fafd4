"""The report as one self-contained HTML page: inline CSS and SVG, no script, no address."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fedchain.report.build import NO_CONTRIBUTIONS, REPORT_FORMAT
from fedchain.report.participants import HASH_PREFIX_CHARS
from fedchain.report.plots import (
    draw_accuracy,
    draw_contributions,
    draw_epsilon,
    draw_rewards,
    draw_stake,
    participant_colours,
    plot_svg,
)
from fedchain.runs.layout import (
    CARD_JSON_FILENAME,
    CARD_MD_FILENAME,
    FEDERATION_FILENAME,
    METRICS_FILENAME,
)

__all__ = ["render_html"]


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: inline CSS, inline SVG plots, no scripts, no external address."""
    run = report["run"]
    title = f"fedchain report · {run.get('run_id', '')}"
    sections = [
        _html_header(report),
        _html_verdict(report["verification"]),
        _html_unfinished(report),
        _html_cards(report),
        _html_accuracy(report),
        _html_contributions(report),
        _html_rewards_and_stake(report),
        _html_privacy(report),
        _html_participants(report),
        _html_events(report),
        _html_rounds(report),
        _html_lineage(report),
        _html_model_card(report),
        _html_notes(report),
        _html_footer(report),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f'<body>\n<main id="report">\n{body}\n</main>\n</body>\n</html>\n'
    )


_CSS = """
:root { --fg: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --ok: #18794e;
  --ok-bg: #e6f6ec; --bad: #b42318; --bad-bg: #fdecea; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { margin: 0 0 2px; font-size: 26px; }
header p { margin: 0; color: var(--muted); }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 13px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 18px 22px; margin-top: 18px; }
section h2 { margin: 0 0 4px; font-size: 18px; }
section .lead { margin: 0 0 12px; color: var(--muted); font-size: 14px; }
.verdict { display: flex; gap: 18px; align-items: center; border-width: 2px; }
.verdict .badge { font-size: 22px; font-weight: 700; padding: 8px 18px; border-radius: 8px;
  letter-spacing: .04em; white-space: nowrap; }
.verdict.ok { border-color: var(--ok); background: var(--ok-bg); }
.verdict.ok .badge { background: var(--ok); color: #fff; }
.verdict.failed { border-color: var(--bad); background: var(--bad-bg); }
.verdict.failed .badge { background: var(--bad); color: #fff; }
.verdict.unfinished { border-color: #9a5b00; background: #fff4e5; }
.verdict.unfinished .badge { background: #9a5b00; color: #fff; }
.verdict p { margin: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px;
  margin-top: 18px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .value { font-size: 22px; font-weight: 650; }
.card .label { color: var(--muted); font-size: 13px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.grid2 section { margin-top: 0; }
.pair { margin-top: 18px; }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } }
figure { margin: 0; }
figure svg { width: 100%; height: auto; display: block; }
.empty { padding: 18px; border: 1px dashed #cbd2d9; border-radius: 8px; color: var(--muted);
  text-align: center; background: #fafbfc; }
table { width: 100%; border-collapse: collapse; font-size: 14px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
td { white-space: nowrap; }
td.wrap { white-space: normal; min-width: 24em; }
.rule-note { color: var(--muted); }
th { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:last-child td { border-bottom: none; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px;
  font-weight: 600; }
.tag.rejected, .tag.holder-refused { background: #fff4e5; color: #9a5b00; }
.tag.app-approved { background: #e5f4ff; color: #00579a; }
.tag.slashed { background: var(--bad-bg); color: var(--bad); }
.tag.ejected { background: #ece8ff; color: #5b3cc4; }
.tag.yes { background: var(--ok-bg); color: var(--ok); }
.tag.no { background: var(--bad-bg); color: var(--bad); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  margin-right: 6px; vertical-align: baseline; }
.pos { color: var(--ok); } .neg { color: var(--bad); }
.notes li { color: var(--muted); }
footer { margin-top: 24px; color: var(--muted); font-size: 13px; text-align: center; }
.scroll { overflow-x: auto; }
"""


_DASH = "\u2013"  # an en dash: "no value"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _short(hex_hash: str | None) -> str:
    return _DASH if not hex_hash else f"{hex_hash[:HASH_PREFIX_CHARS]}…"


def _num(value: int | None) -> str:
    return _DASH if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    return _DASH if value is None else f"{value * 100:.2f} %"


def _score(value: float | None) -> str:
    return _DASH if value is None else f"{value:+.4f}"


def _signed(value: int) -> str:
    css = "pos" if value > 0 else "neg" if value < 0 else ""
    return f'<span class="{css}">{value:+,}</span>' if value else "0"


def _html_header(report: Mapping[str, Any]) -> str:
    run = report["run"]
    rules = run.get("rules", {})
    config = run.get("config") or {}
    run_id = run.get("run_id") or "(unknown: the ledger cannot be read)"
    facts = [f"run <strong>{_esc(run_id)}</strong>"]
    if config:
        facts.append(f"dataset {_esc(config.get('dataset'))} ({_esc(config.get('partitioner'))})")
        facts.append(f"model {_esc(config.get('model'))}")
    if rules:
        facts.append(f"aggregation {_esc(rules['aggregation_rule'])}")
        facts.append(f"contribution {_esc(rules['contribution_method'])}")
    return (
        "<header>\n<h1>Contribution report</h1>\n"
        f"<p>{' · '.join(facts)}</p>\n"
        f'<p class="mono">{_esc(run.get("run_dir", ""))}</p>\n</header>'
    )


def _html_unfinished(report: Mapping[str, Any]) -> str:
    line = (report.get("progress") or {}).get("unfinished")
    if not line:
        return ""
    return (
        '<section class="verdict unfinished" id="unfinished">\n'
        '<div class="badge">UNFINISHED</div>\n'
        f"<div><p><strong>The run stopped early.</strong> {_esc(line)}</p></div>\n</section>"
    )


def _html_verdict(v: Mapping[str, Any]) -> str:
    if v["ok"]:
        detail = (
            f"Every block, signature and state transition checks out from genesis: "
            f"{v['blocks']:,} blocks, {v['signatures']:,} signatures, final height "
            f"{v['final_height']:,}; every model file matches its registered hash."
        )
        return (
            '<section class="verdict ok" id="verdict">\n<div class="badge">VERIFIED</div>\n'
            f"<div><p><strong>Ledger verified.</strong> {_esc(detail)}</p></div>\n</section>"
        )
    extra = "".join(f"<p>also: {_esc(p)}</p>" for p in v.get("model_problems", [])[1:4])
    return (
        '<section class="verdict failed" id="verdict">\n<div class="badge">FAILED</div>\n'
        "<div><p><strong>Verification failed.</strong> First failure:</p>"
        f'<p class="mono">{_esc(v["first_failure"])}</p>{extra}'
        "<p>Nothing the ledger records after the failing block is trusted or shown.</p>"
        "</div>\n</section>"
    )


def _html_cards(report: Mapping[str, Any]) -> str:
    t = report.get("totals") or {}
    if not t:
        return ""
    cards = [
        ("rounds", _num(t["rounds"])),
        (f"participants ({t['active']} active)", _num(t["participants"])),
        ("final accuracy", _pct(t["final_accuracy"])),
        (
            f"rewards paid ({_num(t.get('reward_carried', 0))} carried)",
            _num(t["rewards_paid"]),
        ),
        (
            "updates accepted / left out / refused",
            f"{t['accepted_updates']} / {t['left_out_updates']} / {t['refused_updates']}",
        ),
        ("rounds the model moved", f"{t['rounds_model_moved']} of {t['rounds']}"),
        ("slashing events", _num(t["slashing_events"])),
        ("stake slashed", _num(t["stake_slashed"])),
    ]
    items = "".join(
        f'<div class="card"><div class="value">{_esc(value)}</div>'
        f'<div class="label">{_esc(label)}</div></div>'
        for label, value in cards
    )
    return f'<div class="cards">{items}</div>'


def _section(ident: str, title: str, lead: str, content: str) -> str:
    return (
        f'<section id="{ident}">\n<h2>{_esc(title)}</h2>\n<p class="lead">{lead}</p>\n'
        f"{content}\n</section>"
    )


def _figure(svg: str, ident: str, caption: str) -> str:
    return f'<figure class="plot" id="{ident}" aria-label="{_esc(caption)}">{svg}</figure>'


def _empty(text: str, ident: str) -> str:
    return f'<div class="empty" id="{ident}">{_esc(text)}</div>'


def _html_accuracy(report: Mapping[str, Any]) -> str:
    lead = "Central evaluation of the global model after each round (from the coordinator's "
    lead += f"<code>{METRICS_FILENAME}</code>)."
    if not report.get("metrics_available"):
        return _section(
            "accuracy",
            "Global accuracy per round",
            lead,
            _empty(
                f"no {METRICS_FILENAME} in the run directory: accuracy not recorded",
                "plot-accuracy",
            ),
        )
    return _section(
        "accuracy",
        "Global accuracy per round",
        lead,
        _figure(
            plot_svg(draw_accuracy, report, "acc", (11, 3.4)),
            "plot-accuracy",
            "global accuracy per round",
        ),
    )


def _html_contributions(report: Mapping[str, Any]) -> str:
    lead = "Each client's share of the round's contribution: its recorded score divided by the "
    lead += "sum of the round's absolute scores, in percent, each round normalised on its own so "
    lead += "late rounds (far smaller scores) stay readable; blue helped the model, red hurt it, "
    lead += "grey: not scored. The raw scores are in <code>report.json</code>."
    if not report.get("contributions_recorded"):
        content = _empty(f"{NO_CONTRIBUTIONS} on this ledger", "plot-contributions")
    else:
        height = max(2.2, 0.42 * len(report["participants"]) + 1.3)
        content = _figure(
            plot_svg(draw_contributions, report, "contrib", (11, height)),
            "plot-contributions",
            "contribution per client per round",
        )
    return _section("contributions", "Contribution per client per round", lead, content)


def _html_rewards_and_stake(report: Mapping[str, Any]) -> str:
    if not report["participants"]:
        return ""
    rewards = _section(
        "rewards",
        "Cumulative rewards",
        "Reward units paid to each client from the rounds' pools.",
        _figure(plot_svg(draw_rewards, report, "rewards", (5.6, 3.8)), "plot-rewards", "rewards"),
    )
    stake = _section(
        "stake",
        "Stake over time",
        "Each client's stake at the end of every round; &times; marks a slashing.",
        _figure(plot_svg(draw_stake, report, "stake", (5.6, 3.8)), "plot-stake", "stake"),
    )
    return f'<div class="grid2 pair">{rewards}\n{stake}</div>'


def _html_privacy(report: Mapping[str, Any]) -> str:
    privacy = report.get("privacy")
    if not privacy or not report["participants"]:
        return ""
    lead = (
        f"Differential privacy at {_esc(privacy['mode'])} level: each client's epsilon spent (at "
        f"delta {privacy['delta']:g}) by the end of every round, by Opacus's RDP accountant over "
        "its accepted updates; the dashed line is the genesis' budget, which the ledger enforces "
        f"as at most {privacy['max_participations']} accepted updates per client."
    )
    figure = _figure(
        plot_svg(draw_epsilon, report, "epsilon", (11, 3.8)), "plot-epsilon", "epsilon spent"
    )
    return _section("privacy", "Privacy spent per client per round", lead, figure)


def _html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: set[int],
    wrap: frozenset[int] = frozenset(),
) -> str:
    """A table of already escaped cells; ``numeric`` columns align right, ``wrap`` ones wrap."""

    def cell(tag: str, index: int, content: str) -> str:
        classes = " ".join(
            name for name, cols in (("num", numeric), ("wrap", wrap)) if index in cols
        )
        return (
            f'<{tag} class="{classes}">{content}</{tag}>'
            if classes
            else f"<{tag}>{content}</{tag}>"
        )

    head = "".join(cell("th", i, _esc(h)) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _html_participants(report: Mapping[str, Any]) -> str:
    colours = participant_colours(len(report["participants"]))
    privacy = report.get("privacy")
    rows = []
    for p, colour in zip(report["participants"], colours, strict=True):
        swatch = f'<span class="swatch" style="background:{colour}"></span>'
        active = (
            '<span class="tag yes">yes</span>'
            if p["active"]
            else '<span class="tag no">ejected</span>'
        )
        rows.append(
            [
                f'{swatch}<span class="mono">{_esc(p["fingerprint"])}</span>',
                _DASH if p["name"] == p["fingerprint"] else _esc(p["name"]),
                _num(p["stake"]),
                _signed(p["stake_change"]),
                _num(p["rewards"]),
                _num(p["slashed"]),
                _esc(_score(p["contribution"])),
                f"{p['score_debt']:.4f}",
                f"{p['reputation'] * 100:.0f} %",
                f"{p['updates']} / {p['rejections'] + p['slashings']}",
                active,
                *([f"{p.get('epsilon', 0.0):.3g}"] if privacy else []),
            ]
        )
    table = _html_table(
        [
            "key fingerprint",
            "name",
            "final stake",
            "change",
            "rewards",
            "slashed",
            "contribution",
            "score debt",
            "reputation",
            "updates admitted / refused",
            "active",
            *(["epsilon spent"] if privacy else []),
        ],
        rows,
        {2, 3, 4, 5, 6, 7, 8, 9, 11},
    )
    lead = "Participants are named by the SHA-256 fingerprint of their ledger key, and by "
    lead += "client index where the run directory holds their <code>.pub</code> file, or by "
    lead += f"the name their federation registered them under (<code>{FEDERATION_FILENAME}</code>, "
    lead += "for a registration signed by that key). <i>Score debt</i>: the negative scores of "
    lead += "earlier rounds its positive scores must repay before they are paid."
    if privacy:
        lead += (
            f" Differential privacy ({_esc(privacy['mode'])} level, noise multiplier "
            f"{privacy['noise_multiplier']:g}, clipping norm {privacy['clip_norm']:g}): epsilon "
            f"spent at delta {privacy['delta']:g}, by Opacus's RDP accountant, of a budget of "
            f"{privacy['max_epsilon']:g} (at most {privacy['max_participations']} accepted "
            "updates per client, enforced by the ledger)."
        )
    return _section("participants", "Participants", lead, table)


def _html_who(entry: Mapping[str, Any]) -> str:
    """A participant cell: the key fingerprint, and the client index or registered name where
    one is known."""
    who = f'<span class="mono">{_esc(entry["fingerprint"])}</span>'
    return who if entry["name"] == entry["fingerprint"] else f"{who}<br>{_esc(entry['name'])}"


def _html_events(report: Mapping[str, Any]) -> str:
    events = report["events"]
    lead = "Updates the coordinator refused, slashing with the evidence kind anyone can re-check, "
    lead += "ejections below the minimum stake, and the apps data holders approved (each signed "
    lead += "by its holder)."
    if not events:
        return _section(
            "events",
            "Rejected updates and slashing",
            lead,
            _empty("none: every update was accepted", "events-empty"),
        )
    rows = [
        [
            str(e["round"]),
            str(e["height"]),
            f'<span class="tag {_esc(e["kind"])}">{_esc(e["kind"])}</span>',
            _html_who(e),
            _esc(e["slashing_kind"] or _DASH),
            _esc(e["evidence_kind"] or _DASH),
            _esc(e["reason"]),
            _num(e["stake_lost"]) if e["kind"] == "slashed" else _DASH,
        ]
        for e in events
    ]
    table = _html_table(
        ["round", "block", "event", "participant", "offence", "evidence", "reason", "stake lost"],
        rows,
        {0, 1, 7},
        wrap=frozenset({6}),
    )
    return _section("events", "Rejected updates and slashing", lead, table)


def _html_rounds(report: Mapping[str, Any]) -> str:
    rows = [
        [
            str(r["round"]),
            _esc(_pct(r["accuracy"])),
            _DASH if r["loss"] is None else f"{r['loss']:.4f}",
            _moved(r["model_moved"]),
            _num(r["accepted"]),
            _num(r["left_out"]),
            _num(r["refused"]),
            _num(r["slashing_events"]),
            _num(r["rewards_paid"]),
            _pool(r["pool"]),
            _why(r),
            f'<span class="mono">{_esc(_short(r["model_hash"]))}</span>',
            _DASH if r["seconds"] is None else f"{r['seconds']:.1f}",
        ]
        for r in report["rounds"]
    ]
    headers = ["round", "accuracy", "loss", "model moved", "accepted", "left out", "refused"]
    headers += ["slashed", "rewards", "pool", "why", "model", "seconds"]
    table = _html_table(headers, rows, {0, 1, 2, 4, 5, 6, 7, 8, 12}, wrap=frozenset({10}))
    lead = "What each round decided. <b>accepted</b>: updates averaged into the model; "
    lead += "<b>left out</b>: admitted by the ledger but not used by the aggregation rule (why: "
    lead += "<i>norm</i>, longer than the rule allows; <i>harmful</i>, scored clearly below "
    lead += "zero; <i>useless</i>, scored about zero; <i>frozen</i>, every step the rule tried "
    lead += "raised the validation loss); <b>refused</b>: by the ledger's admission (see the "
    lead += "events); <b>pool</b>: what became of the round's reward pool."
    return _section("rounds", "Rounds and decisions", lead, table)


def _moved(moved: bool | None) -> str:
    if moved is None:
        return _DASH
    return (
        '<span class="tag yes">moved</span>' if moved else '<span class="tag no">unchanged</span>'
    )


def _pool(pool: Mapping[str, Any] | None) -> str:
    """The round's pool decision (paid, paid in part or carried by the payout rule), with its
    reason where there is one."""
    if pool is None:
        return _DASH
    reason = f": {_esc(pool['reason'])}" if pool.get("reason") else ""
    owing = [entry["name"] for entry in pool.get("repaying_debt") or ()]
    debt = (
        f'<br><span class="pool-debt">positive score first repaid score debt (negative '
        f"scores of earlier rounds), so paid less or nothing: {_esc(', '.join(owing))}</span>"
        if owing
        else ""
    )
    return f'<span class="pool-decision">{_esc(pool["decision"])}{reason}</span>{debt}'


def _why(r: Mapping[str, Any]) -> str:
    """The left-out updates grouped by reason (who, with its score; the reason's meaning on
    hover), then the rule's own sentence."""
    groups: dict[str, list[str]] = {}
    meaning: dict[str, str] = {}
    for entry in r["left_out_updates"] or ():
        score = "" if entry["score"] is None else f" ({entry['score']:+.3g})"
        groups.setdefault(entry["reason"], []).append(_esc(entry["name"] + score))
        meaning[entry["reason"]] = entry["why"]
    lines = [
        f'<span class="left-out" title="{_esc(meaning[code])}"><b>{_esc(code)}</b>: '
        f"{', '.join(who)}</span>"
        for code, who in groups.items()
    ]
    if r["rule_note"]:
        lines.append(f'<span class="rule-note">{_esc(r["rule_note"])}</span>')
    return "<br>".join(lines) or _DASH


def _html_lineage(report: Mapping[str, Any]) -> str:
    rows = [
        [
            str(m["round"]),
            str(m["height"]),
            f'<span class="mono" title="{_esc(m["model_hash"])}">'
            f"{_esc(_short(m['model_hash']))}</span>",
            f'<span class="mono">{_esc(_short(m["parent_hash"]))}</span>',
            _esc(m["rule"] or "initial model"),
            str(m["updates"]),
            '<span class="tag yes">present</span>'
            if m["file_present"]
            else '<span class="tag no">missing</span>',
        ]
        for m in report["lineage"]
    ]
    table = _html_table(
        ["round", "block", "model hash", "parent", "rule", "updates", "file"], rows, {0, 1, 5}
    )
    lead = "Every global model version registered on the ledger, with the model it was aggregated "
    lead += "from and the number of committed updates it aggregates."
    return _section("lineage", "Model lineage", lead, table)


def _html_model_card(report: Mapping[str, Any]) -> str:
    """The genesis's model record, and links to the model card written beside the page."""
    model = report["run"].get("model")
    if model:
        rank = f", rank {model['lora_rank']}" if model["finetune"] == "lora" else ""
        base = (
            "no base (trained from its seeded initialisation)"
            if model["base_hash"] is None
            else f'base <span class="mono" title="{_esc(model["base_hash"])}">'
            f"{_esc(_short(model['base_hash']))}</span> from "
            f"{_esc(model['base_source'] or 'a source not stated')}, licence "
            f"{_esc(model['base_licence'] or 'not stated')}"
        )
        what = (
            f"<p><code>{_esc(model['architecture'])}</code>, fine-tuning "
            f"{_esc(model['finetune'])}{rank}; {base}.</p>"
        )
    else:
        what = "<p>The ledger names no model.</p>"
    links = (
        f'<p>The card of the latest model: <a href="{CARD_MD_FILENAME}">{CARD_MD_FILENAME}</a> '
        f'and <a href="{CARD_JSON_FILENAME}">{CARD_JSON_FILENAME}</a>, beside this page; '
        "<code>fedchain models export</code> writes a model with its card.</p>"
    )
    lead = "The model the federation trained, the base it started from, and its card."
    return _section("model-card", "Model card", lead, what + links)


def _html_notes(report: Mapping[str, Any]) -> str:
    notes = report.get("notes") or []
    if not notes:
        return ""
    items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
    return _section(
        "notes",
        "Notes",
        "What this report could not show, and why.",
        f'<ul class="notes">{items}</ul>',
    )


def _html_footer(report: Mapping[str, Any]) -> str:
    v = report["verification"]
    return (
        f"<footer>{_esc(report['generator'])} · {_esc(REPORT_FORMAT)} · genesis "
        f'<span class="mono">{_esc(_short(report["run"].get("genesis_hash")))}</span> · head '
        f'<span class="mono">{_esc(_short(v.get("head_hash")))}</span></footer>'
    )
