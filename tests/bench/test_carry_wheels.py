"""bench/carry_wheels.py: what a lent H100 gets carried, within the 64 MiB a call may take."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import carry_wheels  # noqa: E402


def fake_wheel(folder: Path, name: str, members: dict[str, bytes]) -> Path:
    path = folder / name
    dist_info = f"{name.split('-')[0]}-{name.split('-')[1]}.dist-info"
    record = "".join(f"{member},sha256=x,{len(data)}\n" for member, data in members.items()) + f"{dist_info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in members.items():
            wheel.writestr(member, data)
        wheel.writestr(f"{dist_info}/RECORD", record)
    return path


def test_only_what_the_image_lacks_is_carried_and_inspect_without_its_sandbox_binaries(tmp_path: Path) -> None:
    downloads, target = tmp_path / "downloads", tmp_path / "carry"
    downloads.mkdir()
    fake_wheel(downloads, "inspect_ai-0.3.1-py3-none-any.whl", {
        "inspect_ai/__init__.py": b"", "inspect_ai/binaries/tools-amd64": b"x" * 5000, "inspect_ai/model/m.py": b"pass",
    })
    fake_wheel(downloads, "numpy-2.0.0-cp312-cp312-manylinux_2_28_x86_64.whl", {"numpy/__init__.py": b""})
    fake_wheel(downloads, "boto3-1.0.0-py3-none-any.whl", {"boto3/__init__.py": b""})
    fake_wheel(downloads, "Jsonlines-4.0.0-py3-none-any.whl", {"jsonlines/__init__.py": b""})
    image = tmp_path / "image.txt"
    image.write_text("# the image\nnumpy\ntyping_extensions  # a comment\n", encoding="utf-8")

    assert carry_wheels.main([str(downloads), str(target), "--image", str(image), "--skip", "boto3"]) == 0

    assert sorted(p.name for p in target.iterdir()) == ["Jsonlines-4.0.0-py3-none-any.whl", "inspect_ai-0.3.1-py3-none-any.whl"]
    with zipfile.ZipFile(target / "inspect_ai-0.3.1-py3-none-any.whl") as wheel:
        names = wheel.namelist()
        record = wheel.read("inspect_ai-0.3.1.dist-info/RECORD").decode()
    assert "inspect_ai/model/m.py" in names and not any(n.startswith("inspect_ai/binaries/") for n in names)
    assert "inspect_ai/binaries" not in record and "inspect_ai/model/m.py" in record


def test_the_image_list_has_the_packages_the_gpu_script_relies_on() -> None:
    names = carry_wheels.image_packages(carry_wheels.HERE / "h100_image_packages.txt")
    assert {"torch", "transformers", "peft", "accelerate", "numpy"} <= names
    assert not {"inspect-ai", "pydantic", "trl", "datasets"} & names  # what .whl must bring
