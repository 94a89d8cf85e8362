"""platform/ is a plain folder: it must never shadow the standard library's `platform`."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_platform_importable_with_repo_root_on_path() -> None:
    code = "import platform, sys; assert hasattr(platform, 'system'), platform; print(platform.system())"
    for env_path in ([str(ROOT)], [str(ROOT), str(ROOT / "platform")]):
        out = subprocess.run(
            [sys.executable, "-c", f"import sys; sys.path[:0] = {env_path!r}; {code}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Linux"


def test_platform_folder_is_not_a_package() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert (ROOT / "platform" / "deblur" / "__init__.py").exists()


def test_importing_the_data_side_of_deblur_does_not_import_torch() -> None:
    """Ray Data tasks and most CLI commands import these; torch would cost each process ~2 s."""
    code = (
        "import sys, deblur, deblur.data, deblur.storage, deblur.video, deblur.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert deblur.DeblurNet.__module__ == 'deblur.model' and 'torch' in sys.modules; "
        "assert 'build_model' in dir(deblur)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
