"""scripts/recipes/prepare_device.py's packing of a base for the lent GPU's 64 MiB carry: what travels must
come back byte for byte (the device checks the sha256 and stops on a mismatch)."""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import load_script


@pytest.fixture(scope="module")
def prep():
    return load_script("prepare_device")


def test_planes_round_trip_a_mixed_safetensors_file(prep, tmp_path):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(96, 64, generator=g).to(torch.bfloat16), "b": torch.randn(64, generator=g),
               "e": (torch.randn(33, 8, generator=g) * 1e-3).to(torch.bfloat16)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    head = prep.write_planes(data, tmp_path / "m.planes.xz")
    assert head == 8 + int.from_bytes(data[:8], "little")
    assert prep.read_planes(tmp_path / "m.planes.xz", head, len(data)) == data


def test_planes_refuse_odd_tensor_data(prep, tmp_path):
    header = b'{"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}'
    data = len(header).to_bytes(8, "little") + header + np.arange(3, dtype=np.uint8).tobytes()
    with pytest.raises(ValueError, match="odd length"):
        prep.write_planes(data, tmp_path / "x.planes.xz")
