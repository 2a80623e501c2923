import subprocess
import sys

import torch

import swalp


def test_fixed_point_nearest_hand_values():
    x = torch.tensor([0.3, -1.7, 5.0, -5.0, 0.125, 0.375])
    q = swalp.quantize(x, swalp.FixedPoint(4, 2), "nearest")
    # grid 0.25, range [-2, 1.75]; 0.125 and 0.375 are ties that go to the even multiple
    assert q.tolist() == [0.25, -1.75, 1.75, -2.0, 0.0, 0.5]


def test_demo_command_prints_every_format():
    out = subprocess.run([sys.executable, "-m", "swalp", "demo", "--rows", "8"], capture_output=True, text=True, check=True).stdout
    for name in ("fixed8", "bfp8 per row", "fp8_e4m3", "mxint8", "mxfp8_e5m2"):
        assert name in out
