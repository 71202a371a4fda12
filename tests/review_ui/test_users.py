"""Review-UI accounts (argon2 hashes, roles, the `idu users` commands) and the decision form's maths."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from review_ui.app import decision_from_form, euler_to_quat
from review_ui.users import ROLES, User, UserError, UserStore


def test_accounts_keep_only_argon2_hashes_and_check_passwords(tmp_path):
    users = UserStore(tmp_path)
    users.add("ana", "reviewer", "correct horse battery")
    text = (tmp_path / ".review" / "users.json").read_text()
    assert "correct horse" not in text and "$argon2id$" in text
    assert (tmp_path / ".review" / "users.json").stat().st_mode & 0o777 == 0o600
    assert users.verify("ana", "correct horse battery") == User("ana", "reviewer")
    assert users.verify("ana", "correct horse batterY") is None
    assert users.verify("nobody", "correct horse battery") is None


@pytest.mark.parametrize(
    ("name", "role", "password", "message"),
    [
        ("ana", "admin", "long enough pw", "role is one of"),
        ("a b", "viewer", "long enough pw", "user name"),
        ("../x", "viewer", "long enough pw", "user name"),
        ("ana", "viewer", "short", "shorter than 8"),
    ],
)
def test_bad_accounts_are_refused_with_the_reason(tmp_path, name, role, password, message):
    with pytest.raises(UserError, match=message):
        UserStore(tmp_path).add(name, role, password)
    assert UserStore(tmp_path).list() == []


def test_roles_are_ordered_and_an_existing_user_needs_replace(tmp_path):
    users = UserStore(tmp_path)
    users.add("ana", "viewer", "first password")
    with pytest.raises(UserError, match="exists"):
        users.add("ana", "operator", "second password")
    users.add("ana", "operator", "second password", replace=True)
    assert users.verify("ana", "first password") is None and users.get("ana").can("reviewer")
    assert [User("x", r).can("reviewer") for r in ROLES] == [False, True, True]


def test_concurrent_adds_lose_no_account(tmp_path):
    users = UserStore(tmp_path)
    threads = [
        threading.Thread(target=users.add, args=(f"u{i}", "viewer", f"password-{i}")) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(u.name for u in users.list()) == sorted(f"u{i}" for i in range(8))


def test_users_cli_reads_the_password_from_stdin_and_never_prints_it(tmp_path):
    runner = CliRunner()
    store = str(tmp_path / "store")
    add = ["users", "add", "rita", "--role", "reviewer", "--password-stdin", "--store", store]
    r = runner.invoke(app, [*add, "--json"], input="s3cret-Passw0rd\n")
    assert r.exit_code == 0, r.output
    assert "s3cret" not in r.output and json.loads(r.stdout) == {"user": "rita", "role": "reviewer"}
    assert UserStore(store).verify("rita", "s3cret-Passw0rd") is not None
    r = runner.invoke(app, ["users", "add", "rita", "--role", "viewer", "--password-stdin", "--store", store],
                      input="another-one\n")  # fmt: skip
    assert r.exit_code == 1 and "exists" in r.output
    r = runner.invoke(
        app, ["users", "add", "x", "--role", "boss", "--password-stdin", "--store", store], input="p" * 9
    )
    assert r.exit_code == 1 and "role is one of viewer, reviewer, operator" in r.output
    r = runner.invoke(app, ["users", "list", "--store", store, "--json"])
    assert json.loads(r.stdout) == {"users": [{"user": "rita", "role": "reviewer"}]}
    assert runner.invoke(app, ["users", "remove", "rita", "--store", store]).exit_code == 0
    assert UserStore(store).list() == []


def test_the_rotation_fields_are_rz_ry_rx_in_degrees():
    from reconstruction.cameras import quat_to_matrix

    def rot(axis: int, deg: float) -> np.ndarray:
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        i, j = (axis + 1) % 3, (axis + 2) % 3  # cyclic: x -> (y, z), y -> (z, x), z -> (x, y)
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    q = euler_to_quat(10.0, -25.0, 70.0)
    assert quat_to_matrix(np.array(q)) == pytest.approx(rot(2, 70) @ rot(1, -25) @ rot(0, 10), abs=1e-9)


def test_the_decision_form_sends_only_what_changed():
    form = {"action": "approve", "comment": "ok", "dx": "0.5", "dy": "", "dz": "0", "rx": "0", "ry": "0",
            "rz": "90", "scale": "1"}  # fmt: skip
    d = decision_from_form(form, "rita")
    assert d["reviewer"] == "rita" and d["translation"] == [0.5, 0.0, 0.0] and "scale" not in d
    assert d["rotation_wxyz"] == pytest.approx([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    assert decision_from_form({"action": "reject"}, "rita") == {
        "action": "reject",
        "reviewer": "rita",
        "comment": "",
    }
    with pytest.raises(Exception, match="dx: 'nan' is not a finite number"):
        decision_from_form({"action": "adjust", "dx": "nan"}, "rita")
