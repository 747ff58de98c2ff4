#!/usr/bin/env python3
"""Tests of scripts/check_docs.py against a small repository built in a temp dir.

Each test writes one doc line that names something missing and checks the script
fails naming it; the fixture without that line passes. Run: python3 scripts/test_check_docs.py
"""

import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "check_docs.py"

FILES = {
    "crates/aegis/Cargo.toml": """
        [package]
        name = "aegis"
        [dependencies]
        aegis-core.workspace = true
        tokio.workspace = true
        [dev-dependencies]
        aegis-store.workspace = true
    """,
    "crates/aegis-core/Cargo.toml": """
        [package]
        name = "aegis-core"
    """,
    "crates/aegis-store/Cargo.toml": """
        [package]
        name = "aegis-store"
        [dependencies]
        aegis-core.workspace = true
    """,
    "crates/aegis/src/cli.rs": """
        #[derive(clap::Args)]
        pub struct Serve {
            /// Where the data lives.
            #[arg(long, env = "AEGIS_DATA_DIR", value_parser = crate::values::path())]
            pub data_dir: PathBuf,
            #[arg(short = 'o', long = "output")]
            format: String,
        }
        pub const NAME: &str = "aegis-safe";
    """,
    "crates/aegis/tests/system/main.rs": "mod names;\n",
    "crates/aegis/tests/system/names.rs": "#[test]\nfn every_name_is_kept() {}\n",
    "scripts/spire.sh": "case $1 in --no-agent) ;; esac\n",
    "README.md": """
        # Fixture

        | path | what |
        |---|---|
        | `crates/aegis-core` | the domain |
        | `crates/aegis-store` | the store |
        | `crates/aegis` | the binary |
    """,
    "docs/ARCHITECTURE.md": """
        | crate | depends on (inside the workspace) |
        |---|---|
        | `aegis-core` | nothing |
        | `aegis-store` | `aegis-core` |
        | `aegis` | `aegis-core` |
    """,
    "docs/GOOD.md": """
        Everything here exists: `crates/aegis/src/cli.rs`, scripts/spire.sh,
        `crates/aegis/tests/system/names.rs::every_name_is_kept`, [the README](../README.md#fixture),
        `AEGIS_DATA_DIR`, `AEGIS_DATA_*`, `aegis-store`, the object `aegis-safe`,
        `aegis server --data-dir /d -o json`, `--output`, `--no-agent`, `crates/<crate>/tests/`,
        `cargo test -p aegis --test system names::`, `kubectl exec deploy/safe -- ls`.

        ```sh
        AEGIS_DATA_DIR=/d aegis server --data-dir=/d | grep --count x
        aegis run -- sleep --forever
        ```
    """,
}


def run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root)], capture_output=True, text=True, check=False
    )


class CheckDocs(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        for rel, text in FILES.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip())

    def tearDown(self):
        self.tmp.cleanup()

    def fails_with(self, doc_line: str, message: str, doc: str = "docs/BAD.md"):
        (self.root / doc).write_text(f"# Bad\n\n{doc_line}\n")
        result = run(self.root)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn(f"{doc}:3: {message}", result.stderr)

    def test_the_fixture_passes(self):
        result = run(self.root)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_a_missing_path_fails(self):
        self.fails_with("See `crates/aegis/tests/flood.rs`.", "names crates/aegis/tests/flood.rs, which does not exist")

    def test_a_missing_path_in_plain_text_fails(self):
        self.fails_with("Run scripts/gone.sh first.", "names scripts/gone.sh, which does not exist")

    def test_a_missing_test_function_fails(self):
        self.fails_with(
            "`crates/aegis/tests/system/names.rs::a_renamed_test`",
            "names crates/aegis/tests/system/names.rs::a_renamed_test, but crates/aegis/tests/system/names.rs "
            "has no fn a_renamed_test",
        )

    def test_a_broken_link_fails(self):
        self.fails_with("[the guide](GUIDE.md#setup)", "links to GUIDE.md, which does not exist")

    def test_a_link_to_a_missing_heading_fails(self):
        self.fails_with("[layout](../README.md#layout)", "links to ../README.md#layout, but ../README.md has no such heading")

    def test_an_unknown_setting_fails(self):
        self.fails_with("Set `AEGIS_DATA_PATH`.", "names the setting AEGIS_DATA_PATH, which no code or script reads")

    def test_an_unknown_setting_prefix_fails(self):
        self.fails_with("`AEGIS_SVID_*`", "names the setting AEGIS_SVID_*, which no code or script reads")

    def test_an_unknown_crate_fails(self):
        self.fails_with(
            "`cargo test -p aegis-gone`",
            "names aegis-gone, which is neither a crate under crates/ nor a name in the code",
        )

    def test_an_unknown_flag_of_aegis_fails(self):
        self.fails_with("`aegis server --data-path /d`", "names the flag --data-path, which `aegis` does not have")

    def test_an_unknown_flag_in_a_code_block_fails(self):
        (self.root / "docs/BAD.md").write_text("# Bad\n\n```sh\nsudo aegis put x --valu y\n```\n")
        result = run(self.root)
        self.assertEqual(result.returncode, 1)
        self.assertIn("docs/BAD.md:4: names the flag --valu, which `aegis` does not have", result.stderr)

    def test_an_unknown_lone_flag_fails(self):
        self.fails_with(
            "`--k8s-secrets`", "names the flag --k8s-secrets, which no binary, script or test of the repository has"
        )

    def test_an_unknown_test_target_or_module_fails(self):
        self.fails_with("`cargo test -p aegis --test flood`", "runs the test target flood, which no crates/*/tests/ has")
        self.fails_with(
            "`cargo test -p aegis --test system flood::`",
            "filters on flood::, which is not a module of the test target system",
        )

    def test_a_crate_missing_from_the_layout_table_fails(self):
        (self.root / "crates/aegis-kube").mkdir()
        (self.root / "crates/aegis-kube/Cargo.toml").write_text('[package]\nname = "aegis-kube"\n')
        result = run(self.root)
        self.assertEqual(result.returncode, 1)
        self.assertIn("README.md: the layout table has no row for crates/aegis-kube", result.stderr)
        self.assertIn("docs/ARCHITECTURE.md: the dependency table has no row for aegis-kube", result.stderr)

    def test_a_dependency_row_that_differs_from_cargo_toml_fails(self):
        arch = self.root / "docs/ARCHITECTURE.md"
        arch.write_text(arch.read_text().replace("| `aegis-store` | `aegis-core` |", "| `aegis-store` | nothing |"))
        result = run(self.root)
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            "docs/ARCHITECTURE.md:4: aegis-store depends on ['aegis-core'] (crates/aegis-store/Cargo.toml), "
            "the table says nothing",
            result.stderr,
        )

    def test_a_chart_readme_is_checked(self):
        (self.root / "charts/aegis").mkdir(parents=True)
        self.fails_with("`docs/GONE.md`", "names docs/GONE.md, which does not exist", doc="charts/aegis/README.md")


if __name__ == "__main__":
    unittest.main()
