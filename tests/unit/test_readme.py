"""The README's two commands: .ci/run runs exactly the test command; the main job's space exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands():
    block = re.search(r"## Two commands.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command_verbatim():
    main, tests = _commands()
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [tests]
    assert tests.endswith("python -m pytest -q") and "pip install -e '.[dev]'" in tests


def test_main_job_is_the_smoke_search():
    main, _ = _commands()
    assert main.endswith("python -m adr_scale.tune --space search_spaces/smoke.yaml")
    assert (ROOT / "search_spaces/smoke.yaml").is_file()
