"""Kaggle: find credentials, download the competition, and turn failures into instructions.

`import kaggle` has side effects (it authenticates at import, prints a help text and creates
~/.config/kaggle when it finds no credentials), so this module looks for credentials itself first
and imports kaggle only when it is about to use it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

from .files import shown

COMPETITION = "dogs-vs-cats-redux-kernels-edition"
ORIGINAL_COMPETITION = "dogs-vs-cats"


def rules_url(competition: str = COMPETITION) -> str:
    return f"https://www.kaggle.com/c/{competition}/rules"


class KaggleError(RuntimeError):
    """A Kaggle problem the user can fix; the message says how."""


NO_CREDENTIALS = """No Kaggle credentials found. Do one of these, then run again:
  * create a token at https://www.kaggle.com/settings (API > Create New Token) and either
      - set KAGGLE_API_TOKEN=<token> (or save it to ~/.kaggle/access_token), or
      - save the downloaded kaggle.json as ~/.kaggle/kaggle.json (chmod 600), or
      - set KAGGLE_USERNAME and KAGGLE_KEY;
  * in Colab, add KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY) as secrets (key icon, left bar);
  * or skip Kaggle: download train.zip and test.zip by hand from {url}
    and point vitlib at their folder: VITLIB_DATA=/path/to/folder (or prepare_data("/path/to/folder")).
Without any of these, the notebooks use the built-in synthetic sample."""


TOKEN_FILES = ("access_token", "access_token.txt")  # in ~/.kaggle whatever KAGGLE_CONFIG_DIR says, as kaggle reads them


def token_source(env: dict, home: Path) -> tuple[str | None, str | None]:
    """The first of kaggle's credentials, an access token: where kaggle finds one, and what is wrong with it.

    The one definition of this step, for credential_source and check_credentials alike: KAGGLE_API_TOKEN, then
    ~/.kaggle/access_token, then ~/.kaggle/access_token.txt. An empty one (blank, or only whitespace) is no token
    and the next source is tried, as kaggle does (kagglesdk's get_access_token_from_env). Returns (source, None),
    (None, None) when there is no token, or (source, problem) for a token file that cannot be read.
    """
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN", None
    for name in TOKEN_FILES:
        path, shown = home / ".kaggle" / name, f"~/.kaggle/{name}"
        if not path.is_file():
            continue
        try:
            if path.read_text().strip():
                return shown, None
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            return shown, f"{shown} cannot be read ({why}): replace or delete it."
    return None, None


OAUTH = "~/.kaggle/credentials.json (OAuth)"


def credential_source(env: dict | None = None, home: Path | None = None) -> str | None:
    """Where the kaggle package would find credentials, in its own order, or None.

    Checks the environment and files only: no network, no `import kaggle`.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else Path(home)
    token, _ = token_source(env, home)  # a token file that cannot be read is found: check_credentials says why
    if token:
        return token
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    config = kaggle_config_dir(env, home) / "kaggle.json"
    if config.is_file():
        return shown(config, home)
    if (home / ".kaggle" / "credentials.json").is_file():
        return OAUTH
    return None


PAIR = {"KAGGLE_USERNAME": "username", "KAGGLE_KEY": "key"}  # the variables and the kaggle.json fields they replace
NEW_KAGGLE_JSON = (
    "Download a new kaggle.json at https://www.kaggle.com/settings (API) and replace {file} with it, "
    "or delete it and set KAGGLE_API_TOKEN instead."
)


def check_credentials(env: dict | None = None, home: Path | None = None) -> str:
    """The credentials the kaggle package will use, checked before it sees them; or a KaggleError that says why not.

    A broken kaggle.json or half a KAGGLE_USERNAME/KAGGLE_KEY pair is named in one or two lines, with the fix
    (kaggle itself would print its login help and exit, which reads as "credentials rejected"); no credentials
    at all raise the NO_CREDENTIALS instructions. Environment and files only: no network, no `import kaggle`.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else Path(home)
    config = kaggle_config_dir(env, home) / "kaggle.json"
    file = shown(config, home)
    data, problem = _read_kaggle_json(config, file) if config.is_file() else (None, None)
    if data and not isinstance(data, dict) and any(name.startswith("KAGGLE_") for name in env):
        raise KaggleError(problem)  # kaggle copies every KAGGLE_* variable into it and crashes, token or not
    # 1. a token (an empty one is none)
    token, unreadable = token_source(env, home)
    if unreadable:
        raise KaggleError(unreadable)
    if token:
        return token
    # 2. username and key: each variable, even empty, replaces its field of kaggle.json
    fields = data if isinstance(data, dict) else {}
    found = {v: (env[v], v) if v in env else (fields[f], file) for v, f in PAIR.items() if v in env or f in fields}
    if len(found) == 2:  # kaggle takes both as they are: an empty one would fail only at the first request
        for variable, (value, origin) in found.items():
            if isinstance(value, str) and value.strip():
                continue
            if origin != file:
                raise KaggleError(f"{variable} is set but empty: set it to your Kaggle {PAIR[variable]}, or unset it.")
            what = "is not a string" if value is not None and not isinstance(value, str) else "is empty"
            raise KaggleError(f'"{PAIR[variable]}" in {file} {what}.\n' + NEW_KAGGLE_JSON.format(file=file))
        variables = [variable for variable, (_, origin) in found.items() if origin != file]
        return "KAGGLE_USERNAME/KAGGLE_KEY" if len(variables) == 2 else " + ".join([*variables, file])
    # 3. OAuth, which kaggle tries when 2. is incomplete
    if (home / ".kaggle" / "credentials.json").is_file():
        return OAUTH
    if problem:
        raise KaggleError(problem)
    if found and next(iter(found.values()))[1] != file:
        (variable,) = found
        (missing,) = set(PAIR) - {variable}
        either = f', and {file} has no "{PAIR[missing]}" either' if config.is_file() else ""
        raise KaggleError(
            f"{variable} is set but {missing} is missing{either}: set {missing} to your Kaggle {PAIR[missing]} "
            f'(the "{PAIR[missing]}" of a kaggle.json from https://www.kaggle.com/settings), or unset {variable}.'
        )
    if config.is_file():
        lacking = " or ".join(f'"{field}"' for variable, field in PAIR.items() if variable not in found)
        raise KaggleError(f"{file} has no {lacking}.\n" + NEW_KAGGLE_JSON.format(file=file))
    raise KaggleError(NO_CREDENTIALS.format(url=f"https://www.kaggle.com/c/{COMPETITION}/data"))


def _read_kaggle_json(path: Path, file: str) -> tuple[object, str | None]:
    """kaggle.json's content, and what is wrong with it (None when it is a JSON object)."""
    fix = "\n" + NEW_KAGGLE_JSON.format(file=file)
    try:
        text = path.read_bytes()
    except OSError as e:
        return None, f"{file} cannot be read ({e.strerror}): make it readable (chmod 600 {file}) or delete it."
    if not text.strip():
        return None, f"{file} is empty." + fix
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"{file} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}." + fix
    except UnicodeDecodeError:
        return None, f"{file} is not valid JSON: it is not UTF-8 text." + fix
    if isinstance(data, dict):
        return data, None
    kind = {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(type(data), "a number")
    return data, f'{file} is not a JSON object but {kind}; it must be {{"username": "...", "key": "..."}}.' + fix


def kaggle_config_dir(env: dict, home: Path) -> Path:
    """The one folder kaggle reads kaggle.json from, as kaggle decides it (a kaggle.json elsewhere is ignored).

    $KAGGLE_CONFIG_DIR when set; else ~/.kaggle, except on Linux when that folder does not exist:
    then $XDG_CONFIG_HOME/kaggle (default ~/.config/kaggle).
    """
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    folder = home / ".kaggle"
    if sys.platform.startswith("linux") and not folder.exists():
        folder = Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    return folder


COLAB_SECRETS = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY")  # the secrets a Colab notebook may hold


def load_colab_secrets(env: dict | None = None) -> list[str]:
    """In Colab, copy Kaggle secrets into the environment (before kaggle is imported).

    Returns the names copied; outside Colab, or with no secrets granted, an empty list.
    """
    if "google.colab" not in sys.modules:
        return []
    env = os.environ if env is None else env
    from google.colab import userdata  # type: ignore[import-not-found]

    copied = []
    for name in COLAB_SECRETS:
        if env.get(name):
            continue
        try:
            value = userdata.get(name)
        except Exception:  # SecretNotFoundError, NotebookAccessError: not granted to this notebook
            continue
        if value:
            env[name] = value
            copied.append(name)
    return copied


def colab_secrets_hint(env: dict | None = None) -> str | None:
    """In Colab with no Kaggle credentials, one line on why (no secret added, or one not shared with this notebook)
    and the fix; None outside Colab or once credentials are found. Every notebook's "auto" data says it."""
    if "google.colab" not in sys.modules or credential_source(env) is not None:
        return None
    from google.colab import userdata  # type: ignore[import-not-found]

    hidden = []
    for name in COLAB_SECRETS:
        try:
            userdata.get(name)
        except Exception as e:  # NotebookAccessError: the secret exists, this notebook may not read it
            if "access" in type(e).__name__.lower():
                hidden.append(name)
    if hidden:
        return (f"Colab: the secret {' and '.join(hidden)} is not shared with this notebook: open Secrets (the key "
                "icon on the left), switch on its notebook access, and run this cell again.")
    return ("Colab: no Kaggle secrets: add KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) under Secrets (the "
            "key icon on the left), switch on notebook access, and run this cell again.")


def explain(error: BaseException, competition: str = COMPETITION, action: str = "download") -> KaggleError:
    """Turn an exception from the kaggle package into a KaggleError that says what to do.

    `action` names what failed ("download" or "submission") so the message fits the call.
    """
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, SystemExit) or status == 401:
        return KaggleError(
            "Kaggle rejected the credentials (401 Unauthorized). Create a new token at "
            "https://www.kaggle.com/settings and replace the old one "
            f"(KAGGLE_API_TOKEN, ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY).\n{error}"
        )
    if status == 403:
        return KaggleError(
            f"Kaggle refused the {action} (403 Forbidden): you must accept this competition's rules "
            f"before you can download its files or submit to it. Open {rules_url(competition)} , click "
            "'I Understand and Accept' (signed in as the account of your token), then run again."
        )
    if status == 404:
        return KaggleError(f"Kaggle has no competition named {competition!r} (404 Not Found).")
    if status is not None:
        return KaggleError(f"Kaggle answered HTTP {status} for {competition!r}: {error}")
    if _is_network_error(error):
        if action != "download":
            return KaggleError(
                f"Could not reach Kaggle (no network?): the {action} was not sent. Check the "
                f"connection and run again, or upload the file at https://www.kaggle.com/c/{competition}."
            )
        return KaggleError(
            "Could not reach Kaggle (no network?). Check the connection and run again, or download "
            f"train.zip and test.zip by hand from https://www.kaggle.com/c/{competition}/data "
            "and point vitlib at their folder (VITLIB_DATA=/path/to/folder)."
        )
    return KaggleError(f"Kaggle {action} failed: {error!r}")


def _is_network_error(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests
    except ImportError:
        return False
    return isinstance(error, (requests.ConnectionError, requests.Timeout))


def kaggle_api():
    """An authenticated `KaggleApi`, or a KaggleError that says how to get one."""
    load_colab_secrets()
    check_credentials()  # before `import kaggle`, which prints its login help and exits on what it cannot use
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as e:
        raise KaggleError(
            "The kaggle package is not installed: pip install 'vitlib[kaggle]' (or pip install 'kaggle>=2.2.4' six)."
        ) from e
    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit) as e:
        raise explain(e) from None
    return api


def download_competition(dest: Path, competition: str = COMPETITION, api=None) -> Path:
    """Download `<competition>.zip` into `dest` and return its path.

    A zip already there that opens is kept (a second call is a no-op). The download goes to a
    temporary folder and is renamed into place only when complete, so an interrupted download never
    looks finished. `api` is anything with `competition_download_files(competition, path=, quiet=)`;
    by default the real, authenticated KaggleApi.
    """
    dest = Path(dest)
    target = dest / f"{competition}.zip"
    if target.is_file() and zipfile.is_zipfile(target):
        return target
    api = kaggle_api() if api is None else api
    staging = dest / f".{competition}.download"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        api.competition_download_files(competition, path=str(staging), quiet=False)
    except (Exception, SystemExit) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise explain(e, competition) from None
    got = staging / target.name
    if not (got.is_file() and zipfile.is_zipfile(got)):
        shutil.rmtree(staging, ignore_errors=True)
        raise KaggleError(f"Kaggle's download of {competition!r} did not produce a readable {target.name}.")
    os.replace(got, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def submit(csv_path: Path, message: str, competition: str = COMPETITION, api=None):
    """Submit a csv to the competition; the same clear errors as the download."""
    api = kaggle_api() if api is None else api
    try:
        return api.competition_submit(str(csv_path), message, competition, quiet=False)
    except (Exception, SystemExit) as e:
        raise explain(e, competition, action="submission") from None
