"""The registry: case-insensitive lookup, helpful unknown-name errors, duplicates, user imports."""

from __future__ import annotations

import pytest
from torch import nn

from utils.registry import ARCH_REGISTRY, Registry, RegistryError


def test_lookup_is_case_insensitive_and_scans_the_package():
    assert ARCH_REGISTRY.get("edsr") is ARCH_REGISTRY.get("EDSR")
    assert "RRDBNet" in list(ARCH_REGISTRY)


def test_unknown_name_lists_close_matches():
    with pytest.raises(RegistryError) as info:
        ARCH_REGISTRY.get("RRDBNte")
    assert "Did you mean 'RRDBNet'" in str(info.value)


def test_duplicate_registration_names_both_places():
    reg = Registry("thing")

    @reg.register()
    class Alpha:
        pass

    with pytest.raises(RegistryError) as info:

        @reg.register("alpha")
        class Other:
            pass

    msg = str(info.value)
    assert "'alpha' is registered twice" in msg and msg.count("test_registry.py") == 2


def test_register_function_and_alias():
    reg = Registry("fn")

    @reg.register("Double")
    def double(x: int) -> int:
        return 2 * x

    assert reg.get("double")(4) == 8
    assert list(reg) == ["Double"]


def test_user_arch_from_outside_the_package_trains(tmp_path, hr_folder):
    from tests.conftest import small_train_yaml
    from train import train

    plugin = tmp_path / "plugins" / "my_tiny_arch.py"
    plugin.parent.mkdir()
    plugin.write_text(
        "import torch\nfrom torch import nn\nfrom utils.registry import ARCH_REGISTRY\n\n\n"
        "@ARCH_REGISTRY.register()\nclass MyTinyNet(nn.Module):\n"
        "    def __init__(self, num_feat: int = 4, scale: int = 2) -> None:\n"
        "        super().__init__()\n"
        "        self.body = nn.Conv2d(3, 3 * scale * scale, 3, padding=1)\n"
        "        self.up = nn.PixelShuffle(scale)\n\n"
        "    def forward(self, x):\n        return self.up(self.body(x))\n"
    )
    path = small_train_yaml(tmp_path, hr_folder)
    text = path.read_text().replace("network_g: {type: EDSR, num_feat: 8, num_block: 1}",
                                    "imports: [plugins/my_tiny_arch.py]\nnetwork_g: {type: MyTinyNet, num_feat: 4}")
    path.write_text(text)
    result = train(path, ["train.total_iter=4", "val.val_freq=4"])
    assert result["iter"] == 4
    assert isinstance(ARCH_REGISTRY.get("mytinynet")(), nn.Module)
    assert "psnr" in result["metrics"]["tinyval"]
