"""Validation of the workflow configuration against its JSON schema,
``gfmtune/resources/config.schema.yaml``.

The schema is the one source of truth for what a configuration may hold: the Snakefile validates
the whole configuration with :func:`validate_config`, and
:meth:`gfmtune.train.settings.TrainSettings.from_mapping` validates ``train.settings`` against
the same sub-schema (:func:`validate_settings`), so ``gfmtune train`` and ``snakemake -n`` reject
a bad setting with the same one-line message (key, value, what is allowed).
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
from collections.abc import Iterator, Sequence
from importlib import resources

import yaml
from jsonschema import Draft202012Validator, ValidationError, validators

from gfmtune.models.catalog import MODELS

#: The settings' place in the workflow configuration, also the prefix of their error messages.
SETTINGS_PATH = ("train", "settings")


class ConfigError(ValueError):
    """The configuration does not fit the schema; one line per problem."""


@functools.cache
def config_schema() -> dict:
    """The workflow configuration's JSON schema (do not modify the returned dict)."""
    text = resources.files("gfmtune.resources").joinpath("config.schema.yaml").read_text()
    return yaml.safe_load(text)


def settings_schema() -> dict:
    """The sub-schema of ``train.settings``."""
    schema = config_schema()
    for key in SETTINGS_PATH:
        schema = schema["properties"][key]
    return schema


def _fill_defaults(validator, properties: dict, instance, schema: dict) -> Iterator:
    """``properties`` that first sets absent keys to their schema default (a copy), except in
    objects marked ``fill_defaults: false``; as ``snakemake.utils.validate(set_default=True)``."""
    if isinstance(instance, dict) and schema.get("fill_defaults", True):
        for key, sub in properties.items():
            if "default" in sub:
                instance.setdefault(key, copy.deepcopy(sub["default"]))
    yield from Draft202012Validator.VALIDATORS["properties"](
        validator, properties, instance, schema
    )


_FillingValidator = validators.extend(Draft202012Validator, {"properties": _fill_defaults})


def validate_config(config: dict) -> dict:
    """Validate the workflow configuration in place, filling in the schema's defaults (not in
    ``train.settings``) after :func:`coerce_strings`; raise :class:`ConfigError` listing every
    problem."""
    config.update(coerce_strings(config, config_schema()))
    errors = _FillingValidator(config_schema()).iter_errors(config)
    _raise_errors(errors, (), unknown_models(config.get("models")))
    return config


def unknown_models(models: object) -> list[str]:
    """One line per entry of ``models`` that names no registered model (the catalog's, plug-ins
    included once imported); the schema reports a ``models`` that is no list of strings."""
    if not isinstance(models, list):
        return []
    return [
        f"models[{i}]: {name!r} is not a registered model{_suggest(name, list(MODELS))}; "
        f"registered: {', '.join(MODELS)}"
        for i, name in enumerate(models)
        if isinstance(name, str) and name not in MODELS
    ]


#: JSON-schema type -> test of a parsed value (bool is not a number here).
_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def coerce_strings(value: object, schema: dict) -> object:
    """``value`` with strings read as YAML where the schema expects no string: nested
    ``snakemake --config key='{timesteps: [1, 6]}'`` values arrive as strings ('1', '6'), and
    YAML 1.1 reads ``1e-3`` as one. ``anyOf`` options count (``workers: '0'`` is 0). A string
    that does not parse to an allowed type is kept, for validation to report."""
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {
            k: coerce_strings(v, props.get(k, extra if isinstance(extra, dict) else {}))
            for k, v in value.items()
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_strings(v, schema["items"]) for v in value]
    types = _types(schema)
    if not isinstance(value, str) or not types or "string" in types:
        return value
    for parse in (yaml.safe_load, float):
        try:
            parsed = parse(value)
        except (yaml.YAMLError, ValueError):
            continue
        if any(_TYPES[t](parsed) for t in types if t in _TYPES):
            return coerce_strings(parsed, schema)
    return value


def _types(schema: dict) -> list[str]:
    """The JSON types a schema admits, its ``anyOf`` options' included (a ``const`` option
    adds none: a string equal to it parses to no other type and is kept)."""
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    return types + [t for option in schema.get("anyOf", []) for t in _types(option)]


def validate_settings(values: dict) -> None:
    """Validate training settings against the schema's ``train.settings``, without defaults."""
    _raise_errors(Draft202012Validator(settings_schema()).iter_errors(values), SETTINGS_PATH)


def _raise_errors(
    errors: Iterator[ValidationError], prefix: Sequence[str], extra: Sequence[str] = ()
) -> None:
    lines = sorted({line for err in errors for line in _describe_error(err, prefix)} | set(extra))
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def _key(path: Sequence[str | int]) -> str:
    """``train.settings.betas[1]`` from ``("train", "settings", "betas", 1)``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def _suggest(value: object, choices: Sequence[object]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe_error(err: ValidationError, prefix: Sequence[str]) -> list[str]:
    """One line per problem: the key's path, the bad value and what the schema allows."""
    path = [*prefix, *err.absolute_path]
    if err.validator == "additionalProperties":
        known = sorted(err.schema["properties"])
        where = f" in {_key(path)}" if path else ""
        return [
            f"{_key([*path, extra])}: unknown key{_suggest(extra, known)}; "
            f"allowed keys{where}: {', '.join(known)}"
            for extra in sorted(set(err.instance) - set(known))
        ]
    line = f"{_key(path) or 'configuration'}: {err.message}"
    if err.validator == "enum":
        line += _suggest(err.instance, err.validator_value)
    else:
        line += f"; allowed: {_allowed(err.schema)}"
    if "default" in err.schema:
        line += f" (default {json.dumps(err.schema['default'])})"
    return [line]


def _allowed(schema: dict) -> str:
    """What a sub-schema accepts, in words: ``integer >= 1``, ``2 items, each number < 1``."""
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_allowed(option) for option in schema["anyOf"])
    if "const" in schema:
        return json.dumps(schema["const"])
    types = schema.get("type", "any value")
    text = " or ".join(types) if isinstance(types, list) else types
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    limits = [f"{op} {schema[k]}" for k, op in bounds.items() if k in schema]
    text += " " + " and ".join(limits) if limits else ""
    text += f" matching {schema['pattern']}" if "pattern" in schema else ""
    if "minItems" in schema and schema.get("maxItems") == schema["minItems"]:
        text += f" of {schema['minItems']} items"
    text += f", each {_allowed(schema['items'])}" if "items" in schema else ""
    return text
