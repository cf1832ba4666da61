"""Error cases of tools/convert_bigbigan.py that need no torch: the config checks and the
tensor-list checks (missing, extra, wrong shape) on a checkpoint's `{name: shape}`. Run by
tests/converter_errors.rs with the test venv's Python."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import convert_bigbigan as c  # noqa: E402


def expect(fn, needle):
    try:
        fn()
    except c.ConvertError as e:
        assert needle in str(e), (needle, str(e))
        print(e)
        return
    raise AssertionError(f"no error, expected one naming {needle!r}")


preset = c.resolve_config(c.PRESETS["bigbigan-128"])
shapes = c.expected_shapes(preset)
# BigBiGAN-128: the shared embedding, the first linear, 5 blocks (attention after the 64 px one),
# the output BN and conv.
assert shapes["shared.weight"] == (1000, 128), shapes["shared.weight"]
assert shapes["linear.weight"] == (16 * 96 * 16, 20), shapes["linear.weight"]
assert shapes["blocks.0.0.bn1.gain.weight"] == (16 * 96, 128 + 20)
assert "blocks.3.1.theta.weight" in shapes and "blocks.2.1.theta.weight" not in shapes
assert shapes["output_layer.2.weight"] == (3, 96, 3, 3)

# A checkpoint with exactly these tensors (and SN buffers) passes.
ok = dict(shapes)
ok["linear.u0"] = (1, 16 * 96 * 16)
ok["linear.sv0"] = (1,)
c.check_tensors(ok, preset)

missing = dict(ok)
del missing["blocks.3.1.gamma"]
expect(lambda: c.check_tensors(missing, preset), "blocks.3.1.gamma")
extra = dict(ok)
extra["blocks.1.1.theta.weight"] = (192, 1536, 1, 1)
expect(lambda: c.check_tensors(extra, preset), "blocks.1.1.theta.weight")
wrong = dict(ok)
wrong["blocks.0.0.conv1.weight"] = (1536, 1536, 1, 1)
expect(lambda: c.check_tensors(wrong, preset), "blocks.0.0.conv1.weight")
# A config that does not match the weights: BigBiGAN's weights read as a 256 px model.
expect(lambda: c.check_tensors(ok, c.resolve_config({**c.PRESETS["bigbigan-128"], "resolution": 256})),
       "missing")

for bad, needle in [
    ({"resolution": 100}, "resolution = 100"),
    ({"G_activation": "SiLU"}, "only ReLU"),
    ({"norm_style": "gn"}, "only 'bn'"),
    ({"mybn": True}, "mybn"),
    ({"hier": True, "G_shared": False}, "hier without G_shared"),
    ({"bottom_width": 8}, "bottom_width"),
    ({"G_attn": "sixty-four"}, "G_attn"),
    ({"G_ch": 3}, "multiple of 8"),
    ({"dim_z": 3}, "shorter than its 6 hierarchical chunks"),
]:
    expect(lambda: c.resolve_config({**c.PRESETS["bigbigan-128"], **bad}), needle)
# Which weights carry spectral norm (and so must have a u0).
assert c.is_sn_weight("blocks.0.0.conv1.weight", preset)
assert c.is_sn_weight("blocks.0.0.bn1.gain.weight", preset)
assert not c.is_sn_weight("shared.weight", preset)
assert not c.is_sn_weight("output_layer.0.gain", preset)
unshared = c.resolve_config({**c.PRESETS["bigbigan-128"], "hier": False, "G_shared": False})
assert not c.is_sn_weight("blocks.0.0.bn1.gain.weight", unshared)
print("ok")
