"""The report of a curation run: summary.json, classes.tsv, dropped.md and histogram.png (Pillow).

``dropped.md`` shows, for every reason rows were dropped, how many and up to five of them, so a
surprising count can be checked at a glance.

``malformed.jsonl`` (line number and reason of every malformed row) is written by ``curate`` itself
while it reads, into the same folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Union

from vito_fast.curate.summary import CurationSummary

SIZE = (1600, 640)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 30, 60, 60
MATCHED_COLOUR, KEPT_COLOUR, QUOTA_COLOUR, SHORT_COLOUR = (200, 200, 200), (46, 110, 180), (200, 40, 40), (230, 140, 40)


def write_report(folder: Union[str, os.PathLike], summary: CurationSummary) -> Path:
    """Write summary.json, classes.tsv and histogram.png into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    document = summary.to_json()
    document["malformed_examples"] = [row._asdict() for row in summary.malformed_examples]
    (folder / "summary.json").write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(folder / "classes.tsv", "w", encoding="utf-8") as handle:
        columns = ("index", "name", "mentioned", "matched", "quota", "kept")
        handle.write("\t".join(columns) + "\n")
        for entry in document["classes"]:
            handle.write("\t".join(str(entry[column]) for column in columns) + "\n")
    write_dropped_examples(folder / "dropped.md", summary)
    draw_histogram(summary.matched, summary.kept, summary.quota,
                   f"videos per class: {summary.counts['kept']:,} kept of {summary.rows:,} rows; "
                   f"{len(summary.too_few)} of {len(summary.kept)} classes below their quota",
                   folder / "histogram.png")
    return folder


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return (text[:77] + "...") if len(text) > 80 else text.replace("|", "\\|").replace("\n", " ")


def write_dropped_examples(path: Path, summary: CurationSummary) -> None:
    """A Markdown page: per drop reason, the count and up to five example rows with why each was dropped."""
    lines = [f"# Rows dropped by the curation of {summary.settings.get('metadata', 'the metadata')}", "",
             f"{summary.rows:,} rows read, {summary.counts['kept']:,} kept.", ""]
    for reason, rows in summary.examples.items():
        lines += [f"## {reason.replace('_', ' ')}: {summary.counts[reason]:,} rows", "",
                  "| line | id | title | why |", "|---:|---|---|---|"]
        lines += [f"| {row.get('line', '')} | {_cell(row.get('id'))} | {_cell(row.get('title'))} | "
                  f"{_cell(row.get('detail'))} |" for row in rows]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def _nice_step(largest: int) -> int:
    """A 1-2-5 tick step giving about 5 ticks up to ``largest``."""
    step = 1
    while largest / step > 6:
        for factor in (2, 5, 10):
            if largest / (step * factor) <= 6:
                return step * factor
        step *= 10
    return step


def draw_histogram(matched: List[int], kept: List[int], quota: List[int], title: str, path: Path) -> None:
    """Bars per class index: matched (grey, capped at the top), kept (blue; orange below quota), quota (red)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    left, top = MARGIN_LEFT, MARGIN_TOP
    right, bottom = SIZE[0] - MARGIN_RIGHT, SIZE[1] - MARGIN_BOTTOM
    classes = len(kept)
    ceiling = max(1, max(quota) * 5 // 4, max(kept))
    step = _nice_step(ceiling)

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * min(value, ceiling) / ceiling

    for tick in range(0, ceiling + 1, step):
        y = y_of(tick)
        draw.line([(left, y), (right, y)], fill=(235, 235, 235))
        draw.text((left - 8, y), f"{tick:,}", fill="black", font=font, anchor="rm")
    width = (right - left) / classes
    for index in range(classes):
        x0, x1 = left + index * width, left + (index + 1) * width - (1 if width >= 3 else 0)
        if matched[index] > kept[index]:
            draw.rectangle([x0, y_of(matched[index]), x1, bottom], fill=MATCHED_COLOUR)
        if kept[index]:
            colour = KEPT_COLOUR if kept[index] >= quota[index] else SHORT_COLOUR
            draw.rectangle([x0, y_of(kept[index]), x1, bottom], fill=colour)
        draw.line([(x0, y_of(quota[index])), (x1, y_of(quota[index]))], fill=QUOTA_COLOUR)
    draw.line([(left, bottom), (right, bottom)], fill="black")
    draw.line([(left, top), (left, bottom)], fill="black")
    x_step = _nice_step(classes)
    for tick in range(0, classes, x_step):
        x = left + (tick + 0.5) * width
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x, bottom + 6), str(tick), fill="black", font=font, anchor="mt")
    draw.text((SIZE[0] // 2, bottom + 30), "class index", fill="black", font=font, anchor="mt")
    draw.text((SIZE[0] // 2, 12), title, fill="black", font=font, anchor="mt")
    legend = [(KEPT_COLOUR, "kept"), (SHORT_COLOUR, "kept, below quota"), (MATCHED_COLOUR, "matched, over quota"),
              (QUOTA_COLOUR, "quota")]
    x = left
    for colour, label in legend:
        draw.rectangle([x, 36, x + 12, 48], fill=colour)
        draw.text((x + 18, 42), label, fill="black", font=font, anchor="lm")
        x += 30 + int(draw.textlength(label, font=font))
    image.save(path)
