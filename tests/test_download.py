"""Kaggle credentials and errors, with fake environments, homes and API clients: never the network."""

import io
import sys
import types
import zipfile
from pathlib import Path

import pytest
import requests

from vitlib import download
from vitlib.download import COMPETITION, KaggleError

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kaggle's XDG fallback is Linux only")


def write(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Where the credentials are (the kaggle package's own order), without importing kaggle


@pytest.mark.parametrize(("env", "files", "found"), [
    ({}, [], None),
    ({"KAGGLE_API_TOKEN": "tok"}, [], "KAGGLE_API_TOKEN"),
    ({"KAGGLE_API_TOKEN": ""}, [], None),
    ({}, [".kaggle/access_token"], "~/.kaggle/access_token"),
    ({}, [".kaggle/access_token.txt"], "~/.kaggle/access_token.txt"),
    ({"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"}, [], "KAGGLE_USERNAME/KAGGLE_KEY"),
    ({"KAGGLE_USERNAME": "me"}, [], None),  # half a pair is no credential
    ({"KAGGLE_KEY": "k"}, [], None),
    ({}, [".kaggle/kaggle.json"], "~/.kaggle/kaggle.json"),
    pytest.param({}, [".config/kaggle/kaggle.json"], "~/.config/kaggle/kaggle.json", marks=linux),
    pytest.param({"XDG_CONFIG_HOME": "{home}/xdg"}, ["xdg/kaggle/kaggle.json"], "~/xdg/kaggle/kaggle.json",
                 marks=linux),
    ({"KAGGLE_CONFIG_DIR": "{home}/conf"}, ["conf/kaggle.json"], "~/conf/kaggle.json"),
    ({}, [".kaggle/credentials.json"], "~/.kaggle/credentials.json (OAuth)"),
    # the first source in kaggle's order wins
    ({"KAGGLE_API_TOKEN": "tok", "KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"}, [".kaggle/kaggle.json"],
     "KAGGLE_API_TOKEN"),
    ({"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"}, [".kaggle/kaggle.json"], "KAGGLE_USERNAME/KAGGLE_KEY"),
    ({}, [".kaggle/access_token", ".kaggle/kaggle.json"], "~/.kaggle/access_token"),
])
def test_credential_source(tmp_path, env, files, found):
    env = {k: v.format(home=tmp_path) for k, v in env.items()}
    for f in files:
        write(tmp_path / f)
    assert download.credential_source(env=env, home=tmp_path) == found


def test_an_empty_token_file_is_no_token_and_both_checks_try_the_next_source(tmp_path):
    """As kaggle (kagglesdk's get_access_token_from_env) does. Before, credential_source took an empty
    ~/.kaggle/access_token for a token (so "auto" went to Kaggle, to fail there) while check_credentials did not."""
    write(tmp_path / ".kaggle" / "access_token", " \n")
    assert download.credential_source(env={}, home=tmp_path) is None
    write(tmp_path / ".kaggle" / "access_token.txt", "tok\n")
    found = {download.credential_source(env={}, home=tmp_path), download.check_credentials(env={}, home=tmp_path)}
    assert found == {"~/.kaggle/access_token.txt"}


def test_a_token_file_that_cannot_be_read_is_found_and_named_by_the_check(tmp_path):
    """Found, so "auto" goes to Kaggle, where the check names it in one line (kaggle itself would crash reading it)."""
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "access_token").write_bytes(b"\xff\xfe tok")
    assert download.credential_source(env={}, home=tmp_path) == "~/.kaggle/access_token"
    with pytest.raises(KaggleError, match=r"^~/\.kaggle/access_token cannot be read \(not UTF-8 text\): replace"):
        download.check_credentials(env={}, home=tmp_path)


@pytest.mark.parametrize(("env", "files"), [
    # kaggle reads kaggle.json from ONE folder: $KAGGLE_CONFIG_DIR when set ...
    ({"KAGGLE_CONFIG_DIR": "{home}/conf"}, [".kaggle/kaggle.json"]),
    # ... else ~/.kaggle when that folder exists, else ~/.config/kaggle
    pytest.param({}, [".kaggle/other.txt", ".config/kaggle/kaggle.json"], marks=linux),
    pytest.param({"XDG_CONFIG_HOME": "{home}/xdg"}, [".config/kaggle/kaggle.json"], marks=linux),
])
def test_a_kaggle_json_that_kaggle_would_not_read_is_not_a_credential(tmp_path, env, files):
    """Else vitlib imports kaggle, which exits, and the user reads "credentials rejected" instead of what to do."""
    env = {k: v.format(home=tmp_path) for k, v in env.items()}
    for f in files:
        write(tmp_path / f)
    assert download.credential_source(env=env, home=tmp_path) is None


def no_credentials(monkeypatch, home: Path) -> None:
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))


def test_no_credentials_says_what_to_do_without_importing_kaggle(tmp_path, monkeypatch):
    no_credentials(monkeypatch, tmp_path)
    # any import of kaggle would now fail loudly instead of printing and creating ~/.config/kaggle
    monkeypatch.setitem(sys.modules, "kaggle", None)
    with pytest.raises(KaggleError) as err:
        download.kaggle_api()
    message = str(err.value)
    for step in ("No Kaggle credentials", "https://www.kaggle.com/settings", "KAGGLE_API_TOKEN",
                 "~/.kaggle/kaggle.json", "KAGGLE_USERNAME", "Colab", "secrets", "VITLIB_DATA=",
                 f"https://www.kaggle.com/c/{COMPETITION}/data"):
        assert step in message
    assert list(tmp_path.iterdir()) == []  # no ~/.config/kaggle, nothing


def fake_kaggle(monkeypatch, authenticate) -> type:
    """Install a stand-in `kaggle.api.kaggle_api_extended` whose KaggleApi.authenticate does `authenticate`."""

    class KaggleApi:
        def authenticate(self):
            authenticate()

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = KaggleApi
    for name in ("kaggle", "kaggle.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    return KaggleApi


def test_kaggle_api_authenticates_once_credentials_exist(tmp_path, monkeypatch):
    no_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    cls = fake_kaggle(monkeypatch, lambda: None)
    assert isinstance(download.kaggle_api(), cls)


def test_kaggle_refusing_the_credentials_is_explained(tmp_path, monkeypatch):
    no_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "stale")

    def exits():
        raise SystemExit(1)  # what kaggle does when it cannot authenticate

    fake_kaggle(monkeypatch, exits)
    with pytest.raises(KaggleError, match=r"rejected the credentials.*kaggle\.com/settings"):
        download.kaggle_api()


def test_kaggle_not_installed_is_explained(tmp_path, monkeypatch):
    no_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    monkeypatch.setitem(sys.modules, "kaggle", None)
    with pytest.raises(KaggleError, match=r"pip install 'vitlib\[kaggle\]'"):
        download.kaggle_api()


# ---------------------------------------------------------------------------------------------
# Broken credentials are named before kaggle sees them (kaggle would print its help and exit: "401")

GOOD = '{"username": "me", "key": "k"}'


def setup(home: Path, env: dict, files: dict) -> dict:
    for name, text in files.items():
        write(home / name, text)
    return {k: v.format(home=home) for k, v in env.items()}


def assert_short_and_clear(message: str, *names: str) -> None:
    assert message.count("\n") <= 1, message  # one or two lines, not kaggle's login help
    assert "401" not in message and "rejected" not in message
    for name in names:
        assert name in message, (name, message)


@pytest.mark.parametrize(("env", "files", "names"), [
    ({}, {".kaggle/kaggle.json": '{"username": "me", "key": "k"'},
     ["~/.kaggle/kaggle.json is not valid JSON", "line 1, column 30", "https://www.kaggle.com/settings", "replace"]),
    ({}, {".kaggle/kaggle.json": '{"username": "me",\n "key": k}'}, ["not valid JSON", "line 2, column 9"]),
    ({}, {".kaggle/kaggle.json": ""}, ["~/.kaggle/kaggle.json is empty", "https://www.kaggle.com/settings"]),
    ({}, {".kaggle/kaggle.json": '["me", "k"]'}, ["~/.kaggle/kaggle.json is not a JSON object but a list", '"key"']),
    ({}, {".kaggle/kaggle.json": '{"username": "me"}'}, ['~/.kaggle/kaggle.json has no "key"', "kaggle.com/settings"]),
    ({}, {".kaggle/kaggle.json": '{"key": "k"}'}, ['~/.kaggle/kaggle.json has no "username"']),
    ({}, {".kaggle/kaggle.json": "{}"}, ['has no "username" or "key"']),
    ({}, {".kaggle/kaggle.json": '{"username": "me", "key": ""}'}, ['"key" in ~/.kaggle/kaggle.json is empty']),
    ({}, {".kaggle/kaggle.json": '{"username": "me", "key": 123}'}, ['"key" in ~/.kaggle/kaggle.json is not a string']),
    ({}, {".kaggle/kaggle.json": '{"username": " ", "key": "k"}'}, ['"username" in ~/.kaggle/kaggle.json is empty']),
    ({"KAGGLE_CONFIG_DIR": "{home}/conf"}, {"conf/kaggle.json": "{oops"}, ["~/conf/kaggle.json is not valid JSON"]),
    ({"KAGGLE_USERNAME": "me"}, {}, ["KAGGLE_USERNAME is set but KAGGLE_KEY is missing", "unset KAGGLE_USERNAME"]),
    ({"KAGGLE_KEY": "k"}, {}, ["KAGGLE_KEY is set but KAGGLE_USERNAME is missing", "unset KAGGLE_KEY"]),
    ({"KAGGLE_USERNAME": "me"}, {".kaggle/kaggle.json": '{"username": "other"}'},
     ['KAGGLE_USERNAME is set but KAGGLE_KEY is missing, and ~/.kaggle/kaggle.json has no "key" either']),
    ({"KAGGLE_USERNAME": "me", "KAGGLE_KEY": ""}, {".kaggle/kaggle.json": GOOD}, ["KAGGLE_KEY is set but empty"]),
    ({"KAGGLE_API_TOKEN": "", "KAGGLE_USERNAME": "me"}, {}, ["KAGGLE_KEY is missing"]),  # an empty token is none
    ({}, {".kaggle/access_token": "\n", ".kaggle/kaggle.json": "{"}, ["~/.kaggle/kaggle.json is not valid JSON"]),
    # a kaggle.json that is not an object crashes kaggle whenever a KAGGLE_* variable is set, even with a token
    ({"KAGGLE_API_TOKEN": "tok"}, {".kaggle/kaggle.json": '"me:k"'}, ["not a JSON object but a string"]),
])
def test_broken_credentials_are_named_in_a_line_or_two(tmp_path, monkeypatch, env, files, names):
    monkeypatch.setitem(sys.modules, "kaggle", None)  # importing kaggle would fail loudly
    env = setup(tmp_path, env, files)
    with pytest.raises(KaggleError) as err:
        download.check_credentials(env=env, home=tmp_path)
    assert_short_and_clear(str(err.value), *names)


@pytest.mark.parametrize(("env", "files", "source"), [
    ({}, {".kaggle/kaggle.json": GOOD}, "~/.kaggle/kaggle.json"),
    ({"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"}, {}, "KAGGLE_USERNAME/KAGGLE_KEY"),
    # a variable and kaggle.json make a pair, as in kaggle
    ({"KAGGLE_USERNAME": "me"}, {".kaggle/kaggle.json": '{"key": "k"}'}, "KAGGLE_USERNAME + ~/.kaggle/kaggle.json"),
    ({"KAGGLE_KEY": "new"}, {".kaggle/kaggle.json": GOOD}, "KAGGLE_KEY + ~/.kaggle/kaggle.json"),
    # kaggle reads no further than the first source it can use, so what is behind it does not matter
    ({"KAGGLE_API_TOKEN": "tok"}, {".kaggle/kaggle.json": "{oops"}, "KAGGLE_API_TOKEN"),
    ({"KAGGLE_API_TOKEN": "tok"}, {".kaggle/kaggle.json": '{"username": "me"}'}, "KAGGLE_API_TOKEN"),
    ({}, {".kaggle/access_token": "tok", ".kaggle/kaggle.json": '["me", "k"]'}, "~/.kaggle/access_token"),
    ({"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"}, {".kaggle/kaggle.json": "{oops"}, "KAGGLE_USERNAME/KAGGLE_KEY"),
    ({}, {".kaggle/kaggle.json": "{oops", ".kaggle/credentials.json": "{}"}, "~/.kaggle/credentials.json (OAuth)"),
    # an empty token is none
    ({"KAGGLE_API_TOKEN": ""}, {".kaggle/kaggle.json": GOOD}, "~/.kaggle/kaggle.json"),
    ({}, {".kaggle/access_token": " \n", ".kaggle/kaggle.json": GOOD}, "~/.kaggle/kaggle.json"),
])
def test_usable_credentials_pass_the_check(tmp_path, env, files, source):
    env = setup(tmp_path, env, files)
    assert download.check_credentials(env=env, home=tmp_path) == source


def test_no_credentials_at_all_keep_the_full_instructions(tmp_path):
    with pytest.raises(KaggleError, match="No Kaggle credentials found") as err:
        download.check_credentials(env={}, home=tmp_path)
    assert str(err.value) == download.NO_CREDENTIALS.format(url=f"https://www.kaggle.com/c/{COMPETITION}/data")


def kaggle_that_exits(monkeypatch) -> list:
    """A stand-in kaggle that, like the real one, prints its login help and exits; returns its list of calls."""
    calls = []

    def exits():
        calls.append("authenticate")
        print("Authentication required to call the Kaggle API.")
        raise SystemExit(1)

    fake_kaggle(monkeypatch, exits)
    return calls


def test_kaggle_api_names_a_malformed_kaggle_json_without_asking_kaggle(tmp_path, monkeypatch, capsys):
    no_credentials(monkeypatch, tmp_path)
    write(tmp_path / ".kaggle" / "kaggle.json", '{"username": "me" "key": "k"}')
    calls = kaggle_that_exits(monkeypatch)
    with pytest.raises(KaggleError) as err:
        download.kaggle_api()
    assert_short_and_clear(str(err.value), "~/.kaggle/kaggle.json is not valid JSON", "line 1, column 19",
                           "https://www.kaggle.com/settings")
    assert calls == [] and capsys.readouterr().out == ""  # kaggle never ran: no help text, no "401"


def test_kaggle_api_says_the_key_is_missing(tmp_path, monkeypatch, capsys):
    no_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    calls = kaggle_that_exits(monkeypatch)
    with pytest.raises(KaggleError) as err:
        download.kaggle_api()
    assert_short_and_clear(str(err.value), "KAGGLE_USERNAME is set but KAGGLE_KEY is missing")
    assert calls == [] and capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------
# Colab secrets


def fake_colab(monkeypatch, secrets: dict) -> None:
    class SecretNotFoundError(Exception):
        pass

    def get(name):
        if name not in secrets:
            raise SecretNotFoundError(name)
        return secrets[name]

    module = types.ModuleType("google.colab")
    module.userdata = types.SimpleNamespace(get=get)
    monkeypatch.setitem(sys.modules, "google.colab", module)


def test_colab_secrets_are_copied_into_the_environment(monkeypatch):
    fake_colab(monkeypatch, {"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"})
    env = {}
    assert download.load_colab_secrets(env) == ["KAGGLE_USERNAME", "KAGGLE_KEY"]
    assert env == {"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"}
    assert download.credential_source(env=env, home=Path("/nonexistent")) == "KAGGLE_USERNAME/KAGGLE_KEY"


def test_colab_secrets_never_override_the_environment(monkeypatch):
    fake_colab(monkeypatch, {"KAGGLE_API_TOKEN": "from-secret"})
    env = {"KAGGLE_API_TOKEN": "from-env"}
    assert download.load_colab_secrets(env) == []
    assert env == {"KAGGLE_API_TOKEN": "from-env"}


def test_outside_colab_no_secrets_are_read(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    env = {}
    assert download.load_colab_secrets(env) == [] and env == {}


# ---------------------------------------------------------------------------------------------
# The download, with a fake client


def competition_zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train.zip", b"")
        zf.writestr("sample_submission.csv", "id,label\n")
    return buf.getvalue()


def http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


class FakeApi:
    """Anything with `competition_download_files(competition, path=, quiet=)`, as download_competition asks."""

    def __init__(self, error: BaseException | None = None, payload: bytes | None = None):
        self.error, self.payload, self.calls = error, payload, []

    def competition_download_files(self, competition, path, quiet=True):
        self.calls.append((competition, path))
        Path(path, "partial.bin").write_bytes(b"half")  # kaggle writes as it goes
        if self.error is not None:
            raise self.error
        Path(path, f"{competition}.zip").write_bytes(self.payload or competition_zip_bytes())

    def competition_submit(self, file, message, competition, quiet=True):
        raise self.error


def test_download_writes_the_zip_and_a_second_call_is_a_no_op(tmp_path):
    api = FakeApi()
    target = download.download_competition(tmp_path / "dl", api=api)
    assert target == tmp_path / "dl" / f"{COMPETITION}.zip" and zipfile.is_zipfile(target)
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [target.name]  # no staging left behind
    assert download.download_competition(tmp_path / "dl", api=api) == target
    assert len(api.calls) == 1
    assert api.calls[0][0] == COMPETITION


@pytest.mark.parametrize(("error", "expected"), [
    (http_error(401), r"rejected the credentials \(401 Unauthorized\).*kaggle\.com/settings"),
    (http_error(403), r"403 Forbidden.*accept this competition's rules.*"
                      r"https://www\.kaggle\.com/c/dogs-vs-cats-redux-kernels-edition/rules"),
    (http_error(404), r"no competition named 'dogs-vs-cats-redux-kernels-edition'"),
    (http_error(500), r"HTTP 500"),
    (requests.ConnectionError("Max retries exceeded"), r"Could not reach Kaggle \(no network\?\).*VITLIB_DATA="),
    (requests.Timeout("read timed out"), r"Could not reach Kaggle"),
    (ConnectionResetError("reset"), r"Could not reach Kaggle"),
    (SystemExit(1), r"rejected the credentials"),
    (ValueError("odd"), r"download failed: ValueError\('odd'\)"),
])
def test_each_failure_is_explained_and_nothing_on_disk_is_lost(tmp_path, error, expected):
    dest = tmp_path / "dl"
    write(dest / "notes.txt", "mine")
    with pytest.raises(KaggleError, match=expected):
        download.download_competition(dest, api=FakeApi(error))
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt"]
    assert (dest / "notes.txt").read_text() == "mine"


def test_the_rules_url_is_the_competition_asked_for(tmp_path):
    with pytest.raises(KaggleError, match=r"https://www\.kaggle\.com/c/dogs-vs-cats/rules"):
        download.download_competition(tmp_path, download.ORIGINAL_COMPETITION, api=FakeApi(http_error(403)))


def test_a_download_that_is_not_a_zip_is_reported_and_not_kept(tmp_path):
    with pytest.raises(KaggleError, match="did not produce a readable"):
        download.download_competition(tmp_path / "dl", api=FakeApi(payload=b"<html>error</html>"))
    assert list((tmp_path / "dl").iterdir()) == []


def test_an_interrupted_download_is_never_taken_for_complete(tmp_path):
    dest = tmp_path / "dl"
    with pytest.raises(KeyboardInterrupt):
        download.download_competition(dest, api=FakeApi(KeyboardInterrupt()))
    assert not (dest / f"{COMPETITION}.zip").exists()
    api = FakeApi()
    target = download.download_competition(dest, api=api)
    assert len(api.calls) == 1 and zipfile.is_zipfile(target)
    assert [p.name for p in dest.iterdir()] == [target.name]


def test_a_truncated_zip_already_there_is_downloaded_again(tmp_path):
    target = write(tmp_path / f"{COMPETITION}.zip", "truncated")
    api = FakeApi()
    assert download.download_competition(tmp_path, api=api) == target
    assert len(api.calls) == 1 and zipfile.is_zipfile(target)


def test_submit_failures_are_explained_too(tmp_path):
    with pytest.raises(KaggleError, match="accept this competition's rules"):
        download.submit(tmp_path / "submission.csv", "first try", api=FakeApi(http_error(403)))


def test_in_colab_without_credentials_one_line_says_why_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")  # no kaggle.json there
    fake_colab(monkeypatch, {})
    env = {}
    hint = download.colab_secrets_hint(env)
    assert "no Kaggle secrets" in hint and "KAGGLE_USERNAME" in hint and "\n" not in hint

    class NotebookAccessError(Exception):
        pass

    def hidden(name):  # the secret exists, but this notebook was not granted it
        if name == "KAGGLE_API_TOKEN":
            raise NotebookAccessError(name)
        raise KeyError(name)

    sys.modules["google.colab"].userdata = types.SimpleNamespace(get=hidden)
    hint = download.colab_secrets_hint(env)
    assert "KAGGLE_API_TOKEN is not shared with this notebook" in hint and "notebook access" in hint
    assert download.colab_secrets_hint({"KAGGLE_API_TOKEN": "t"}) is None  # credentials found: nothing to say


def test_outside_colab_there_is_no_secrets_hint(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert download.colab_secrets_hint({}) is None
