"""Both command lines import and answer --help with every warning an error,
compiled from source (no cached .pyc): what a newer Python, or a machine
that never wrote bytecode, sees. A dependency with invalid escape sequences
(docopt 0.6.2) fails here."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_strict(tmp_path, *args: str) -> subprocess.CompletedProcess:
    # an empty pycache prefix: every module is compiled from its source; -B: nothing written
    return subprocess.run([sys.executable, "-W", "error", "-B", "-X", f"pycache_prefix={tmp_path}",
                           *args], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_s4d_help_compiles_from_source_with_warnings_as_errors(tmp_path):
    proc = _run_strict(tmp_path, "-m", "s4d", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--data-dir" in proc.stdout and not proc.stderr


def test_s4ctl_commands_parsed_by_docopt_compile_from_source_with_warnings_as_errors(tmp_path):
    for command in ("ls", "rm", "map"):
        proc = _run_strict(tmp_path, str(REPO / "bin" / "s4ctl"), command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "Usage:" in proc.stdout and not proc.stderr
