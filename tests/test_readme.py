"""The README's two commands are the ones CI runs and the docs use, and its links resolve."""
import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def commands() -> dict[str, str]:
    """The README's first code block: command -> its comment ("main job", "test suite ...")."""
    block = re.search(r"```bash\n(.*?)```", README, re.S)[1]
    return {line.split("#")[0].strip(): line.split("#", 1)[1].strip() for line in block.splitlines() if "#" in line}


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c, what in commands().items() if what.startswith("test suite"))
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == test_command, "the last line of .ci/run must be the README's test command"


def test_the_docs_use_the_readme_commands():
    main = next(c for c, what in commands().items() if what.startswith("main job"))
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for line in doc.read_text().splitlines():
            for step in re.findall(r"(?:\S*python|\.venv/bin/python) -m pytest[^`]*", line):
                assert step.strip().startswith(".venv/bin/python -m pytest"), f"{doc.name}: {step}"
    assert "pipeline run all --serve" in main  # the app first, the models as they land


def test_links_to_docs_resolve():
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", doc.read_text()):
            base = ROOT if doc.name == "README.md" else doc.parent
            assert (base / target).is_file(), f"{doc.name} links to {target}, which is missing"
