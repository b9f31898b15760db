"""An evaluation as people read it: a few lines of text, and one self-contained HTML page.

The page is plain HTML and CSS; pictures are inline base64 PNGs and the training curves inline
SVG, so it opens from disk, offline, with nothing fetched from anywhere.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

SECTIONS = (
    ("elbo", "ELBO"),
    ("reconstruction", "Reconstruction: MSE, PSNR, SSIM"),
    ("active-units", "Active units"),
    ("identification", "Breed identification"),
    ("confusion", "Most-confused breeds"),
    ("clustering", "Clusters against breeds"),
    ("ancestry", "Ancestry of mutts"),
    ("training-curves", "Training curves"),
    ("reconstructions", "Reconstructions"),
    ("samples", "Prior samples"),
    ("breed-samples", "Breed samples"),
    ("mixes", "Breed mixes"),
    ("latent-map", "Latent map"),
)
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .2em .7em; text-align: right; border-bottom: 1px solid #eee; }
th:first-child, td:first-child { text-align: left; }
tr.baseline td { color: #777; } td.best { font-weight: bold; background: #eaf5ea; }
img { image-rendering: pixelated; max-width: 100%; border: 1px solid #eee; }
img.grid { width: 40em; } p.note { color: #666; font-size: .9em; }
nav a { margin-right: .8em; } svg { margin-right: 1em; }
"""
CHART_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def _pct(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.1%}"


def _num(value, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None or value != value else fmt.format(value)


# --- text ----------------------------------------------------------------------------------


def format_evaluation(m: dict) -> str:
    """The headline figures, each beside its baseline, and where the report is."""
    rec, base, ident = m["reconstruction"], m["reconstruction"]["baselines"], m["identification"]
    pca, pixel = base["pca"], ident["pixel_pca"]["logistic"]
    lines = [
        f"{m['run']} on {m['data']} ({m['split']} split, {m['n_images']} images, "
        f"{m['seconds']:.0f} s)",
        f"negative ELBO {m['elbo']['nats_per_image']:.1f} nats/image "
        f"({m['elbo']['bits_per_dim']:.3f} bits/dim); active units {m['active_units']['count']} of {m['active_units']['of']}",
        f"PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.3f}, MSE {rec['mse']:.5f}; mean image "
        f"{base['mean_image']['psnr']:.2f} dB / {base['mean_image']['ssim']:.3f}, "
        f"PCA-{pca['components']} {pca['psnr']:.2f} dB / {pca['ssim']:.3f}",
    ]
    found = [f"k-NN {_pct(ident['knn']['top1'])}/{_pct(ident['knn']['top5'])}",
             f"logistic {_pct(ident['logistic']['top1'])}/{_pct(ident['logistic']['top5'])}"]  # fmt: skip
    if ident["classifier"]:
        c = ident["classifier"]
        found.append(f"{_classifier_name(c, 'classifier')} {_pct(c['top1'])}/{_pct(c['top5'])}")
    lines.append(
        f"breed top-1/top-5: {', '.join(found)}; pixel PCA logistic {_pct(pixel['top1'])}/"
        f"{_pct(pixel['top5'])}; chance {_pct(ident['chance']['top1'])}/"
        f"{_pct(ident['chance']['top5'])}"
    )
    answering = ident["classifier"] or ident[ident["probe_chosen"]]
    lines.append(
        f"breed log loss of the {'classifier' if ident['classifier'] else 'probe'} that answers "
        f"(Kaggle's metric, calibrated): {_loss(answering.get('log_loss'))} nats; "
        f"uniform {_loss(math.log(ident['n_breeds']))}"
    )
    km, pixel_km = m["clustering"]["kmeans"], m["clustering"]["pixel_pca"]["kmeans"]
    lines.append(
        f"k-means clusters vs breeds: NMI {km['nmi']:.3f}, ARI {km['ari']:.3f} (pixel PCA "
        f"{pixel_km['nmi']:.3f}, {pixel_km['ari']:.3f})"
    )
    if m["ancestry"]:
        a = m["ancestry"]
        lines.append(
            f"mutts with both parents in the top 2: {_pct(a['ancestry']['both_parents_top2'])} "
            f"(nearest centroid {_pct(a['nearest_centroid']['both_parents_top2'])})"
        )
    lines.append(f"report: {Path(m['run']) / 'eval' / 'report.html'}")
    return "\n".join(lines)


def format_comparison(table: dict) -> str:
    """The runs side by side, one row per figure; '*' marks the best of a ranked row."""
    names = table["runs"]
    cells = [[_cell(row, i) for i in range(len(names))] for row in table["rows"]]
    label_w = max([len(r["label"]) for r in table["rows"]] + [6])
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    better = {"higher": "higher", "lower": "lower", None: ""}
    header = f"{'':{label_w}}  " + "  ".join(
        f"{n:>{w}}" for n, w in zip(names, widths, strict=True)
    )
    lines = [header + "  better"]
    for row, row_cells in zip(table["rows"], cells, strict=True):
        values = "  ".join(f"{c:>{w}}" for c, w in zip(row_cells, widths, strict=True))
        lines.append(f"{row['label']:{label_w}}  {values}  {better[row['better']]}")
    lines.append("* best of the row")
    return "\n".join(lines + [f"note: {n}" for n in table["notes"]])


def _cell(row: dict, i: int) -> str:
    value = row["values"][i]
    text = "-" if value is None else row["format"].format(value)
    return text + ("*" if i in row["best"] else " ")


# --- HTML ----------------------------------------------------------------------------------


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def _table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    """Cells are escaped HTML, or (css class, escaped HTML); `classes` styles whole rows."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(_td(c) for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _td(cell) -> str:
    if isinstance(cell, tuple):
        return f'<td class="{cell[0]}">{cell[1]}</td>'
    return f"<td>{cell}</td>"


def _image(path: str | None, alt: str, css: str = "grid") -> str:
    if not path or not Path(path).is_file():
        return f'<p class="note">no picture ({html.escape(alt)})</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _section(anchor: str, body: str) -> str:
    title = dict(SECTIONS)[anchor]
    return f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def render_report(m: dict, curves: list[dict]) -> str:
    """The evaluation page: every section of `SECTIONS`, in order."""
    e = html.escape
    model, training = m["model"], m["training"]
    intro = (
        f"<p>{e(model['type'])} ({e(str(model['preset']))}, {model['image_size']} px, latent "
        f"{model['latent_dim']}, {model['parameters']:,} parameters, {e(model['likelihood'])} "
        f"likelihood), {training['epochs']} epochs in {training['minutes']:.1f} min (best "
        f"epoch {training['best_epoch']}). Scored on the <b>{e(m['split'])}</b> split of "
        f"<code>{e(m['data'])}</code>: {m['n_images']} images; evaluated in "
        f"{m['seconds']:.0f} s.</p>"
    )
    nav = "<nav>" + "".join(f'<a href="#{a}">{e(t)}</a>' for a, t in SECTIONS) + "</nav>"
    bodies = {
        "elbo": _elbo_html(m),
        "reconstruction": _reconstruction_html(m),
        "active-units": _active_units_html(m),
        "identification": _identification_html(m),
        "confusion": _confusion_html(m["identification"]),
        "clustering": _clustering_html(m["clustering"]),
        "ancestry": _ancestry_html(m["ancestry"]),
        "training-curves": _curves_html(curves),
        "reconstructions": _image(m["pictures"]["reconstructions"], "reconstructions")
        + _note("Each row of dogs from the split above their reconstructions."),
        "samples": _image(m["pictures"]["samples"], "prior samples")
        + _note("Codes drawn from the prior N(0, I), decoded (seed 0)."),
        "breed-samples": _breed_samples_html(m["pictures"]["breed_samples"]),
        "mixes": _mixes_html(m["pictures"]["mixes"]),
        "latent-map": _image(m["pictures"]["latent_map"], "latent map")
        + _note("Posterior means of every labelled image in 2-D (PCA, t-SNE), coloured by breed."),
    }
    sections = "\n".join(_section(anchor, bodies[anchor]) for anchor, _ in SECTIONS)
    return _page(f"dogvae evaluation: {m['run']}", intro + nav + sections)


def _elbo_html(m: dict) -> str:
    elbo = m["elbo"]
    rows = [
        ["negative ELBO, nats/image", f"{elbo['nats_per_image']:.1f}"],
        ["bits/dim", f"{elbo['bits_per_dim']:.3f}"],
        ["reconstruction term, nats/image", f"{elbo['reconstruction']:.1f}"],
        ["KL term, nats/image", f"{elbo['kl']:.1f}"],
    ]
    return _table(["", "value"], rows) + _note(
        "Lower is better. beta = 1, one fixed noise draw per image, as training validates. "
        "Bits/dim add log 256 per sub-pixel; under the Bernoulli likelihood they are not a code "
        "length. Comparable between runs only with the same likelihood (and image size for nats)."
    )


def _reconstruction_html(m: dict) -> str:
    rec, base = m["reconstruction"], m["reconstruction"]["baselines"]
    k = base["pca"]["components"]

    def row(name, r):
        return [html.escape(name), f"{r['mse']:.5f}", f"{r['psnr']:.2f}", f"{r['ssim']:.4f}"]

    rows = [row("this model", rec), row("mean image", base["mean_image"]),
            row(f"PCA, {k} components", base["pca"])]  # fmt: skip
    return _table(["", "MSE", "PSNR, dB", "SSIM"], rows, ["", "baseline", "baseline"]) + _note(
        "Reconstruction from the posterior mean. Baselines fitted on the training split: the "
        "mean training image, and PCA with as many components as the latent size."
    )


def _active_units_html(m: dict) -> str:
    units = m["active_units"]
    return (
        f"<p>{units['count']} of {units['of']} latent dimensions are active.</p>"
        + _note(
            "A dimension is active when its posterior mean varies across the split's images "
            "(variance above 0.01, Burda et al. 2016); the rest carry no information."
        )  # fmt: skip
    )


def _loss(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _classifier_name(figures: dict, name: str = "the model's own classifier") -> str:
    """With the number of views of each photo it averaged, where the metrics say."""
    views = figures.get("views")
    return f"{name} ({views} views of each photo)" if views and views > 1 else name


def _identification_html(m: dict) -> str:
    ident = m["identification"]
    entries = [("k-NN on the latent codes", ident["knn"], ""),
               ("logistic probe on the latent codes", ident["logistic"], "")]  # fmt: skip
    if ident["classifier"]:
        entries.append((_classifier_name(ident["classifier"]), ident["classifier"], ""))
    pixel = ident["pixel_pca"]
    entries += [
        ("k-NN on PCA features of pixels", pixel["knn"], "baseline"),
        ("logistic probe on PCA features of pixels", pixel["logistic"], "baseline"),
        ("chance", ident["chance"], "baseline"),
    ]
    rows = [[html.escape(n), _pct(r["top1"]), _pct(r["top5"]), _loss(r.get("log_loss"))]
            for n, r, _ in entries]  # fmt: skip
    return _table(["", "top-1", "top-5", "log loss"], rows, [c for *_, c in entries]) + _note(
        f"{ident['n_breeds']} breeds; fitted on {ident['n_train']} training images, scored on "
        f"{ident['n_val']} validation images (whatever the split above). Codes are "
        "facing-invariant (mean of the image's and its mirror's posterior means); the pixel "
        "baseline uses PCA with as many components as the latent size, mirrored alike."
    )


def _confusion_html(ident: dict) -> str:
    table = ident["confusion"]
    e = html.escape
    if not table["pairs"]:
        return _note(f"No mistakes by {ident['confusion_source']} on the validation split.")
    pairs = _table(
        ["true breed", "taken for", "images", "share of the breed"],
        [[e(p["true"]), e(p["predicted"]), str(p["count"]), _pct(p["share_of_true"])]
         for p in table["pairs"]],
    )  # fmt: skip
    breeds = table["breeds"]
    matrix = _table(
        ["true \\ predicted"] + [e(b) for b in breeds],
        [[e(b)] + [str(c) for c in row] for b, row in zip(breeds, table["matrix"], strict=True)],
    )
    return (
        pairs
        + _note(f"Predictions of {ident['confusion_source']}, validation split.")
        + matrix
        + _note("The confusion matrix among the breeds most involved in mistakes.")
    )


def _clustering_html(c: dict) -> str:
    entries = [
        ("k-means on the latent codes", c["kmeans"], ""),
        ("Gaussian mixture on the latent codes", c["gaussian_mixture"], ""),
        ("k-means on PCA features of pixels", c["pixel_pca"]["kmeans"], "baseline"),
        ("Gaussian mixture on PCA features of pixels", c["pixel_pca"]["gaussian_mixture"], "baseline"),
    ]  # fmt: skip
    rows = [
        [html.escape(n), f"{r['nmi']:.3f}", f"{r['ari']:.3f}", _pct(r["purity"])]
        for n, r, _ in entries
    ]
    return _table(["", "NMI", "ARI", "purity"], rows, [c for *_, c in entries]) + _note(
        "Every labelled image clustered with k = the number of breeds; 0 is no agreement with "
        "the breeds, 1 is perfect."
    )


def _ancestry_html(a: dict | None) -> str:
    if a is None:
        return _note("Not measured: the data folder has no mutts.csv (a `dogvae synth` set has).")
    entries = [("ancestry (sparse mixture of centroids)", a["ancestry"], ""),
               ("nearest centroid", a["nearest_centroid"], "baseline")]  # fmt: skip
    rows = [
        [html.escape(n), _pct(r["both_parents_top2"]), _pct(r["both_parents_top3"]),
         f"{r['share_error']:.3f}"]
        for n, r, _ in entries
    ]  # fmt: skip
    rows.append(["chance", _pct(a["chance_both_parents_top2"]), "", ""])
    return _table(
        ["", "both parents in top 2", "in top 3", "share error"], rows, ["", "baseline", "baseline"]
    ) + _note(
        f"{a['n_mutts']} mutts with known parents, {a['n_breeds']} breeds; held-out purebreds "
        f"explained as their one breed: {_pct(a['purebreds_as_one_breed'])}."
    )


def _curves_html(curves: list[dict]) -> str:
    if not curves:
        return _note("No training log (RUN/metrics.jsonl) to draw.")

    def series(split: str, key: str):
        return [(r["epoch"], r[split][key]) for r in curves if key in r.get(split, {})]

    charts = [
        line_chart("loss, nats/image", {"validation -ELBO": series("val", "elbo"),
                                        "training loss (beta-weighted)": series("train", "loss")}),
        line_chart("validation PSNR, dB", {"PSNR": series("val", "psnr")}),
        line_chart("validation KL, nats/image", {"KL": series("val", "kl")}),
    ]  # fmt: skip
    return "".join(charts) + _note("Per epoch, from the run's metrics.jsonl.")


def line_chart(
    title: str, series: dict[str, list[tuple[float, float]]], width: int = 300, height: int = 200
) -> str:
    """An inline SVG line chart of (x, y) series, with its value range and a legend."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    left, right, top, bottom = 52, 8, 20, 16 + 14 * len(series)
    plot_w, plot_h = width - left - right, height - top - bottom

    def at(x, y):
        px = left + (x - x0) / ((x1 - x0) or 1) * plot_w
        py = top + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h
        return f"{px:.1f},{py:.1f}"

    parts = [f'<text x="{left}" y="13" font-size="12">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
             'stroke="#ccc"/>',
             f'<text x="{left - 4}" y="{top + 9}" font-size="10" text-anchor="end">'
             f"{_axis_value(y1)}</text>",
             f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">'
             f"{_axis_value(y0)}</text>",
             f'<text x="{left}" y="{top + plot_h + 11}" font-size="10">epoch {x0:g}</text>',
             f'<text x="{left + plot_w}" y="{top + plot_h + 11}" font-size="10" '
             f'text-anchor="end">{x1:g}</text>']  # fmt: skip
    for i, (name, values) in enumerate(series.items()):
        colour = CHART_COLOURS[i % len(CHART_COLOURS)]
        line = " ".join(at(x, y) for x, y in values)
        parts.append(
            f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        )
        y = top + plot_h + 25 + 14 * i
        parts.append(
            f'<text x="{left}" y="{y}" font-size="11" fill="{colour}">{html.escape(name)}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">' + "".join(parts) + "</svg>"
    )


def _axis_value(value: float) -> str:
    """Short enough for the chart's margin: whole numbers from 1000 up, else 4 digits."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _breed_samples_html(path: str | None) -> str:
    if path is None:
        return _note("This model cannot draw a chosen breed (only conditional models can).")
    return _image(path, "breed samples") + _note(
        "A row per breed: the conditional model's samples given that breed (seed 0)."
    )


def _mixes_html(strips: list[dict]) -> str:
    if not strips:
        return _note("Mixing breeds needs at least two breeds.")
    return "".join(
        f"<p>{html.escape(s['a'])} to {html.escape(s['b'])}</p>"
        + _image(s["picture"], f"mix {s['a']} {s['b']}", css="strip")
        for s in strips
    ) + _note("Breed centroids and the straight line between them in latent space, decoded.")


def render_comparison(table: dict) -> str:
    """The comparison table as a page; the best of each ranked row in bold."""
    e = html.escape
    header = [""] + [e(n) for n in table["runs"]] + ["better"]
    rows = []
    for row in table["rows"]:
        cells = [e(row["label"].strip())]
        for i, value in enumerate(row["values"]):
            text = "-" if value is None else e(row["format"].format(value))
            cells.append(("best", text) if i in row["best"] else text)
        rows.append(cells + [row["better"] or ""])
    unranked = ["baseline" if r["label"].startswith(" ") else "" for r in table["rows"]]
    body = _table(header, rows, unranked)
    paths = "".join(f"<li>{e(n)}: <code>{e(p)}</code></li>"
                    for n, p in zip(table["runs"], table["paths"], strict=True))  # fmt: skip
    notes = "".join(_note(n) for n in table["notes"])
    return _page("dogvae compare", body + f"<ul>{paths}</ul>" + notes
                 + _note("Bold: the best of the row. Grey rows are baselines, not ranked."))  # fmt: skip
