"""``train --config RUN/config.yaml --out RUN`` (resuming from the run's own saved config) never writes over
the file it read: the same settings leave it byte for byte, changed ones are refused in one line."""

from __future__ import annotations

from reproduce.train import main
from tests.inprocess import run_main
from tests.test_train import REPO, tiny_config, write_config


def test_the_runs_own_config_as_input_is_kept_byte_for_byte(tmp_path):
    run = tmp_path / "run"
    first = run_main(main, ["--config", write_config(tmp_path, tiny_config("v2", iterations=2)), "--out", run],
                     cwd=REPO)
    assert first.returncode == 0, first.stderr
    saved = run / "config.yaml"
    saved.write_text("# my notes on this run\n" + saved.read_text(encoding="utf-8"), encoding="utf-8")
    before = saved.read_bytes()
    again = run_main(main, ["--config", saved, "--out", run, "--iterations", "2"], cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert saved.read_bytes() == before  # the same config: not rewritten (the comment stays)

    changed = run_main(main, ["--config", saved, "--out", run, "--iterations", "2", "--workers", "1"], cwd=REPO)
    assert changed.returncode == 1 and len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    assert changed.stderr.startswith(f"error: {saved}: is the run's own config.yaml") and "copy" in changed.stderr
    assert saved.read_bytes() == before


def test_a_run_folder_config_that_differs_only_in_runtime_settings_is_still_updated(tmp_path):
    """The usual case keeps working: another --config file, newer runtime settings saved into the run folder."""
    run = tmp_path / "run"
    path = write_config(tmp_path, tiny_config("v2", iterations=2))
    assert run_main(main, ["--config", path, "--out", run], cwd=REPO).returncode == 0
    done = run_main(main, ["--config", path, "--out", run, "--workers", "1"], cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "workers: 1" in (run / "config.yaml").read_text(encoding="utf-8")
