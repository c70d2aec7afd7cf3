"""The README's code comes from tests that run: every block the README marks with `<!-- cookbook:NAME -->`
is, line for line, the `# [cookbook:NAME]` region of Tests/service/test_cookbook.py, test_runs.py or cookbook_*.sh."""
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def regions():
    out = {}
    for f in [ROOT / "Tests" / "service" / "test_cookbook.py", ROOT / "Tests" / "service" / "test_runs.py",
              *sorted((ROOT / "Tests" / "service").glob("cookbook_*.sh"))]:
        for m in re.finditer(r"^( *)# \[cookbook:([a-z_-]+)\]\n(.*?)^\1# \[/cookbook\]\n", f.read_text(), re.S | re.M):
            out[m.group(2)] = textwrap.dedent(m.group(3)).rstrip("\n")
    return out


def test_every_cookbook_block_in_the_readme_is_a_tested_region():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- cookbook:([a-z_-]+) -->\n```(?:python|sh)\n(.*?)\n```", readme, re.S)
    have = regions()
    assert {name for name, _ in blocks} == set(have), "README blocks and test regions differ"
    for name, code in blocks:
        assert code == have[name], f"README block {name} differs from its test region"
