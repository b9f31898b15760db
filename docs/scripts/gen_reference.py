"""Write the generated reference pages at build time (mkdocs-gen-files), so they never drift.

- `cli.md`: every `dogvae` command, its arguments and help, walked from `dogvae.cli.build_parser()`.
- `http.md` and `openapi.json`: the web app's JSON API, from the FastAPI router's OpenAPI schema.
- `api/<layer>.md`: one `::: module` block per module under `src/dogvae`, found on disk, so a new
  module appears without editing anything here; `LAYERS` only decides the page and the order.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import mkdocs_gen_files

from dogvae import __version__
from dogvae.cli import build_parser

os.environ["COLUMNS"] = "76"  # argparse wraps usage to the terminal; fix it for the page

SRC = Path(__file__).resolve().parents[2] / "src"

# The API pages, in the data flow's order: (page, title, module prefixes). A module goes to the
# first layer whose prefix it starts with, else to the last page; listed modules come first, in this
# order, and any other module of the layer follows alphabetically. Extend the lists to place new ones.
LAYERS = [
    ("data", "Data: files to tensors", ["dogvae.data", "dogvae.synth"]),
    (
        "model",
        "Model and training",
        [
            "dogvae.model",
            "dogvae.losses",
            "dogvae.train",
            "dogvae.trainer",
            "dogvae.callbacks",
            "dogvae.validation",
            "dogvae.runtime",
            "dogvae.optim",
            "dogvae.progress",
            "dogvae.run",
            "dogvae.recipes",
            "dogvae.precision",
            "dogvae.tune",
        ],
    ),
    (
        "runs",
        "Runs, checkpoints and pretrained folders",
        ["dogvae.checkpoint", "dogvae.pretrained", "dogvae.atomic"],
    ),
    ("tasks", "Latents and tasks", ["dogvae.latents", "dogvae.tasks"]),
    (
        "evaluation",
        "Evaluation and pictures",
        ["dogvae.evaluate", "dogvae.eval_report", "dogvae.metrics", "dogvae.pictures"],
    ),
    ("app", "Web app", ["dogvae.app"]),
    (
        "shell",
        "Package, CLI, demo and the rest",
        ["dogvae", "dogvae.cli", "dogvae.demo", "dogvae.errors"],
    ),
]
SKIP = {"dogvae.__main__"}


def module_names() -> list[str]:
    names = []
    for path in sorted((SRC / "dogvae").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return [n for n in names if n not in SKIP]


def layer_of(name: str) -> str:
    for page, _, prefixes in LAYERS[:-1]:
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return page
    return LAYERS[-1][0]


def order_key(name: str, prefixes: list[str]) -> tuple:
    listed = [i for i, p in enumerate(prefixes) if name == p]
    return (listed[0] if listed else len(prefixes), name)


def write_api_pages() -> None:
    names = module_names()
    for page, title, prefixes in LAYERS:
        mine = sorted(
            (n for n in names if layer_of(n) == page), key=lambda n: order_key(n, prefixes)
        )
        with mkdocs_gen_files.open(f"api/{page}.md", "w") as f:
            f.write(f"# {title}\n\n")
            for name in mine:
                f.write(
                    f"## `{name}`\n\n::: {name}\n    options:\n      show_root_heading: false\n\n"
                )


def argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = (
            ", ".join(f"`{o}`" for o in action.option_strings)
            or f"`{action.metavar or action.dest}`"
        )
        if action.metavar and action.option_strings:
            metavar = action.metavar
            name += f" `{' '.join(metavar) if isinstance(metavar, tuple) else metavar}`"
        helps = [action.help or ""]
        if action.choices:
            helps.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
        if action.required and action.option_strings:
            helps.append("required")
        if not any(
            action.default is v for v in (None, False, argparse.SUPPRESS)
        ) and not isinstance(action, argparse._StoreTrueAction):
            helps.append(f"default `{action.default}`")
        text = "; ".join(h for h in helps if h).replace("|", "\\|")
        rows.append(f"| {name} | {text} |")
    return rows


def subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def write_cli_page() -> None:
    parser = build_parser()
    with mkdocs_gen_files.open("cli.md", "w") as f:
        f.write("# CLI reference\n\n")
        f.write(
            "Generated from `dogvae.cli.build_parser()` when the docs are built. Every command "
            "exits 0 when done, 2 on bad input (one line naming the file or flag), and 130 or 143 "
            "when Ctrl-C or SIGTERM stopped it.\n\n"
        )
        f.write(f"```text\n{parser.format_usage()}```\n\n")
        for name, help_, sub in subcommands(parser):
            f.write(f"## `dogvae {name}`\n\n{help_[0].upper() + help_[1:] if help_ else ''}.\n\n")
            f.write(f"```text\n{sub.format_usage()}```\n\n")
            rows = argument_rows(sub)
            if rows:
                f.write("| argument | meaning |\n|---|---|\n" + "\n".join(rows) + "\n\n")


def openapi_schema() -> dict:
    from fastapi import FastAPI

    from dogvae.app.api import router

    app = FastAPI(title="dogvae", version=__version__)
    app.include_router(router)
    return app.openapi()


def schema_type(schema: dict) -> str:
    if "anyOf" in schema:
        return " or ".join(schema_type(s) for s in schema["anyOf"] if s.get("type") != "null")
    if "enum" in schema:
        return " / ".join(f"`{v}`" for v in schema["enum"])
    if schema.get("format") == "binary" or "contentMediaType" in schema:
        return "file"
    return schema.get("type", schema.get("$ref", "").rsplit("/", 1)[-1])


def field_row(name: str, schema: dict, where: str, required: bool) -> str:
    notes = [where, schema_type(schema)]
    if "default" in schema and schema["default"] is not None:
        notes.append(f"default `{schema['default']}`")
    for key, word in (("minimum", ">="), ("maximum", "<=")):
        if key in schema:
            notes.append(f"{word} {schema[key]}")
    if required:
        notes.append("required")
    text = (schema.get("description") or "").replace("|", "\\|")
    return f"| `{name}` | {'; '.join(n for n in notes if n)} | {text} |"


def operation_fields(op: dict, components: dict) -> list[str]:
    rows = [
        field_row(
            p["name"],
            {**p["schema"], "description": p.get("description", "")},
            p["in"],
            p.get("required", False),
        )
        for p in op.get("parameters", [])
    ]
    for content in op.get("requestBody", {}).get("content", {}).values():
        body = components[content["schema"]["$ref"].rsplit("/", 1)[-1]]
        for name, schema in body.get("properties", {}).items():
            rows.append(field_row(name, schema, "form", name in body.get("required", [])))
    return rows


def answer_text(response: dict) -> str:
    """A response's description, with the schema or media type it answers with."""
    kinds = []
    for media, content in response.get("content", {}).items():
        ref = content.get("schema", {}).get("$ref", "")
        kinds.append(f"`{ref.rsplit('/', 1)[-1]}`" if ref else f"`{media}`")
    text = response.get("description", "")
    return f"{text} ({', '.join(kinds)})" if kinds else text


def write_http_page() -> None:
    spec = openapi_schema()
    components = spec["components"]["schemas"]
    with mkdocs_gen_files.open("openapi.json", "w") as f:
        json.dump(spec, f, indent=1)
    with mkdocs_gen_files.open("http.md", "w") as f:
        f.write("# JSON API reference\n\n")
        f.write(
            "Generated from the FastAPI router (`dogvae.app.api`) when the docs are built; the "
            "schema itself is [openapi.json](openapi.json), and a running server describes itself "
            "at `/openapi.json`. [The web app](web.md) explains the answers.\n\n"
        )
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                f.write(
                    f"## `{method.upper()} {path}`\n\n{op.get('description') or op['summary']}\n\n"
                )
                rows = operation_fields(op, components)
                if rows:
                    f.write(
                        "| field | in, type | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
                    )
                answers = [
                    f"| {status} | {answer_text(r)} |" for status, r in op["responses"].items()
                ]
                f.write("| status | answer |\n|---|---|\n" + "\n".join(answers) + "\n\n")


write_cli_page()
write_http_page()
write_api_pages()
