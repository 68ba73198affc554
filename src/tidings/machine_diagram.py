"""A machine's picture as SVG, drawn from its description (no layout library, no browser).

The description is plain data (:meth:`tidings.Machine.describe`: name, initial and final
states, states, transitions), so the client and the server's faces draw the same picture:
the runner registers it with the broker, and the dashboard shows it with live counts.

States stand in columns by their distance from the initial state (states no transition reaches
come last); a transition is an arrow from its state to the next, labelled with its event's
topic (a timer's dashed, "timer NAME"), a transition back to its own state a loop above it. The
initial state has the dot that starts it; final states a double border. With ``counts`` each
state shows how many instances it holds (the dashboard's live picture).
"""

from __future__ import annotations

from collections import deque
from html import escape
from typing import Any

from tidings.transitions import transition_name

TIMER_PREFIX = "timer:"

COLUMN_W, ROW_H, BOX_H, MARGIN = 230, 90, 40, 40


def _levels(d: dict[str, Any]) -> dict[str, int]:
    level = {d["initial"]: 0}
    todo = deque([d["initial"]])
    while todo:
        state = todo.popleft()
        for t in d["transitions"]:
            if t["source"] == state and t["target"] not in level:
                level[t["target"]] = level[state] + 1
                todo.append(t["target"])
    last = max(level.values(), default=0) + 1
    return {s: level.get(s, last) for s in d["states"]}


def svg(d: dict[str, Any], counts: dict[str, int] | None = None,
        rates: dict[str, float] | None = None) -> str:
    """The picture of the machine described by ``d`` (with instance counts per state, and
    transitions per second by transition name when given)."""
    levels = _levels(d)
    places: dict[str, tuple[float, float, float]] = {}  # state -> x, y, width
    rows: dict[int, int] = {}
    for state in d["states"]:
        column = levels[state]
        row = rows.get(column, 0)
        rows[column] = row + 1
        label = state if counts is None else f"{state} ({counts.get(state, 0)})"
        width = max(90.0, 8.0 * len(label) + 24)
        places[state] = (MARGIN + 30 + column * COLUMN_W, MARGIN + row * ROW_H, width)
    width = max(x + w for x, _, w in places.values()) + MARGIN
    height = max(y for _, y, _ in places.values()) + BOX_H + MARGIN
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
           f'height="{height:.0f}" font-family="system-ui, sans-serif" font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
           'fill="#555"/></marker></defs>',
           f"<title>{escape(d['name'])}</title>"]
    x0, y0, _ = places[d["initial"]]
    out.append(f'<circle cx="{x0 - 22}" cy="{y0 + BOX_H / 2}" r="6" fill="#1d2330"/>'
               f'<line x1="{x0 - 16}" y1="{y0 + BOX_H / 2}" x2="{x0}" y2="{y0 + BOX_H / 2}" '
               'stroke="#555" marker-end="url(#arrow)"/>')
    for t in d["transitions"]:
        label = t["topic"].replace(TIMER_PREFIX, "timer ")
        if rates is not None:
            rate = rates.get(transition_name(t["source"], t["target"], t["topic"]), 0.0)
            label += f" · {rate:.3g}/s"
        out.append(_arrow(places[t["source"]], places[t["target"]], label,
                          t["topic"].startswith(TIMER_PREFIX), t["source"] == t["target"]))
    for state, (x, y, w) in places.items():
        label = state if counts is None else f"{state} ({counts.get(state, 0)})"
        out.append(f'<g class="state" data-state="{escape(state)}">'
                   f'<rect x="{x}" y="{y}" width="{w:.0f}" height="{BOX_H}" rx="8" '
                   'fill="#fff" stroke="#3b6fe0" stroke-width="1.5"/>')
        if state in d["final"]:
            out.append(f'<rect x="{x + 3}" y="{y + 3}" width="{w - 6:.0f}" '
                       f'height="{BOX_H - 6}" rx="6" fill="none" stroke="#3b6fe0"/>')
        out.append(f'<text x="{x + w / 2:.0f}" y="{y + BOX_H / 2 + 4}" '
                   f'text-anchor="middle">{escape(label)}</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _arrow(a: tuple[float, float, float], b: tuple[float, float, float], text: str,
           timer: bool, loop: bool) -> str:
    label = escape(text)
    dash = ' stroke-dasharray="5 3"' if timer else ""
    ax, ay, aw = a
    bx, by, bw = b
    if loop:
        cx = ax + aw / 2
        return (f'<path d="M{cx - 12},{ay} C{cx - 30},{ay - 36} {cx + 30},{ay - 36} '
                f'{cx + 12},{ay}" fill="none" stroke="#555"{dash} marker-end="url(#arrow)"/>'
                f'<text x="{cx:.0f}" y="{ay - 30}" text-anchor="middle" fill="#444">{label}'
                "</text>")
    forward = bx > ax
    x1, x2 = (ax + aw, bx) if forward else (ax, bx + bw)
    y1, y2 = ay + BOX_H / 2, by + BOX_H / 2
    if not forward:  # a way back: below the boxes
        y1, y2 = ay + BOX_H, by + BOX_H
        x1, x2 = ax + aw / 2, bx + bw / 2
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2 + (28 if not forward else -6)
    return (f'<path d="M{x1:.0f},{y1:.0f} Q{mx:.0f},{my + (20 if not forward else 0):.0f} '
            f'{x2:.0f},{y2:.0f}" fill="none" stroke="#555"{dash} '
            f'marker-end="url(#arrow)"/><text x="{mx:.0f}" y="{my:.0f}" '
            f'text-anchor="middle" fill="#444">{label}</text>')
