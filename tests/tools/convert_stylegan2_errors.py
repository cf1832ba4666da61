"""Error cases of tools/convert_stylegan2.py that need no torch: what the converter refuses
before any tensor is read. Run by tests/converter_errors.rs with the test venv's Python."""

import io
import os
import pickle
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import convert_stylegan2 as c  # noqa: E402


def pickled(obj_source):
    """A pickle whose first reference is `module.name` (as protocol 2 writes a global)."""
    module, name = obj_source
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)\x81."


def expect_error(path, needle):
    try:
        c.read_nvlabs_pickle(path)
    except c.ConvertError as e:
        assert needle in str(e), (needle, str(e))
        return str(e)
    raise AssertionError(f"{path}: no error, expected one naming {needle!r}")


with tempfile.TemporaryDirectory() as d:
    def write(name, data):
        p = os.path.join(d, name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    # A TF-era pickle: refused with the way out (NVlabs' legacy.py), nothing executed.
    tf = write("tf.pkl", pickled(("dnnlib.tflib.network", "Network")))
    print(expect_error(tf, "legacy.py"))
    # A pickle that would run a command: refused by name.
    evil = write("evil.pkl", pickled(("os", "system")))
    print(expect_error(evil, "os.system"))
    # A pickle of something else entirely.
    other = write("other.pkl", pickle.dumps({"weights": [1, 2, 3]}))
    print(expect_error(other, "no 'G_ema'"))
    # Half a pickle.
    half = write("half.pkl", pickle.dumps({"G_ema": {"_init_kwargs": {}}})[:10])
    print(expect_error(half, "not a readable network pickle"))
    # Not a pickle or torch file at all.
    junk = write("junk.bin", b"GIF89a....")
    try:
        c.checkpoint_kind(junk)
        raise AssertionError("junk accepted")
    except c.ConvertError as e:
        assert "unknown file format" in str(e), str(e)
        print(e)
    # Channel widths no (channel_base, channel_max) rule describes.
    try:
        c.channel_rule({4: 512, 8: 256, 16: 512})
        raise AssertionError("irregular widths accepted")
    except c.ConvertError as e:
        assert "min(channel_base / r, channel_max)" in str(e), str(e)
    assert c.channel_rule({4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256}) == (32768, 512)
    assert c.channel_rule({4: 64, 8: 64, 16: 64, 32: 64}) == (2048, 64)
print("ok")
