"""A notebook's configuration cell: the values a learner edits (DATA, STORAGE, PRESET, EPOCHS, ...), each said with
where it came from.

A value edited in the cell wins. An environment variable (`VITLIB_DATA`, `VITLIB_STORAGE`, `VITLIB_PRESET`,
`VITLIB_EPOCHS`; CI sets `VITLIB_DATA=sample`) only fills a value left at its default, so an edit is never
silently overridden. `STORAGE = "drive"` keeps the data and the runs in Google Drive (Colab only), so every
notebook, each on a fresh Colab machine, finds what the others left there.
"""

from __future__ import annotations

import os

from . import files

DEFAULTS = {"DATA": "auto", "STORAGE": "local", "PRESET": "auto", "EPOCHS": None}
ENVIRONMENT = {name: f"VITLIB_{name}" for name in DEFAULTS}  # VITLIB_DATA is files.DATA_ENV
STORAGES = ("local", "drive")


class SettingError(ValueError):
    """A configuration value that cannot work; the message names it and what to write instead."""


def configure(*, defaults: dict | None = None, verbose: bool = True, mount=None, **values) -> tuple:
    """The configuration cell's values, in the order given, after the environment fills those left at their default.

    `values`: NAME=value as the cell sets them. `defaults`: a notebook's own defaults where they differ from
    DEFAULTS (07 trains 3 EPOCHS). Prints one line per value with its source. STORAGE "drive" mounts Google Drive
    (`files.use_drive`; `mount` as there, for tests); outside Colab it is one clear error.
    """
    known = {**DEFAULTS, **(defaults or {})}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingError(f"no setting {', '.join(unknown)}: the settings are {', '.join(known)}")
    chosen, lines = {}, []
    for name, value in values.items():
        variable, default = ENVIRONMENT.get(name), known[name]
        from_env = os.environ.get(variable, "") if variable else ""
        if value != default:
            where = "set in this cell" + (f"; {variable}={from_env} ignored" if from_env else "")
        elif from_env:
            value, where = _parse(name, from_env, variable), f"from {variable} (the cell left its default, {default!r})"
        else:
            where = "the default"
        chosen[name] = _check(name, value)
        lines.append(f"{name} = {chosen[name]!r}  # {where}")
    if chosen.get("STORAGE") == "drive":
        places = files.use_drive(mount=mount)
        lines.append("data and runs kept in Google Drive: " + ", ".join(str(p) for p in places.values()))
    if verbose:
        print("\n".join(lines))
    return tuple(chosen.values())


def _parse(name: str, text: str, variable: str):
    """An environment variable's text as the value the cell would hold (EPOCHS is a whole number)."""
    if name != "EPOCHS":
        return text
    try:
        return int(text)
    except ValueError:
        raise SettingError(f"{variable}={text!r}: EPOCHS is a whole number of epochs, e.g. {variable}=6") from None


def _check(name: str, value):
    if name == "STORAGE" and value not in STORAGES:
        raise SettingError(f"STORAGE = {value!r}: write \"local\" (this machine's folders) or \"drive\" (Colab: "
                           "Google Drive)")
    if name == "EPOCHS" and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                    or value < 1):
        raise SettingError(f"EPOCHS = {value!r}: write a whole number of epochs of at least 1, or None for the "
                           "preset's own")
    return value
