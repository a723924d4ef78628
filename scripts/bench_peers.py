"""The ONNX Runtime side of scripts/bench-peers (run through it; it makes the venv).

The shipped weights (assets/model.safetensors) are put into the original's network
(../shared/peers/seed-pytorch/model.py: conv3x3 pad 1 3→16, ReLU, maxpool 2, conv3x3 pad 1 16→32,
ReLU, maxpool 2, flatten, fc 8192→100, ReLU, fc 100→10), written as the ONNX graph that
torch.onnx.export gives for it (Conv, Relu, MaxPool, Flatten, Gemm transB=1) with the `onnx`
helper API, so no torch is needed. The graph is first checked against logits PyTorch computed
(crates/cli/tests/fixtures: simple_cnn.pth and simple_cnn_logits.json). Then ORT (CPU provider,
N intra-op threads, 1 inter-op, all graph optimisations, as the peer's bench_ort.py) runs it in
FP32 and as ORT's own static int8 (quantize_static: QDQ, per-channel, uint8 activations, int8
weights, MinMax calibration on real CIFAR-10 training images), at batch 1/16/64: images/s after
a warm-up, over about --seconds per point; and top-1 accuracy of both on test images. fastcnn's
figures come from criterion's output of the same run (--criterion), printed beside them.

    python scripts/bench_peers.py --data DIR/cifar10 [--criterion FILE] [--threads 2] [--seconds 2]

Preprocessing is the project's (crates/model/src/preprocess.rs): the 32×32 JPEGs (PIL decode)
resized to 64×64 by a numpy port of `preprocess::resize` (triangle filter, same f32 taps and
order), then x / 127.5 − 1 per channel, CHW.
"""
import argparse
import glob
import json
import os
import re
import struct
import subprocess
import tempfile
import time
import zipfile

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# PyTorch's layout (Linear weights [out, in]); the order of the state dict.
SHAPES = {"conv1.weight": (16, 3, 3, 3), "conv1.bias": (16,), "conv2.weight": (32, 16, 3, 3),
          "conv2.bias": (32,), "fc1.weight": (100, 8192), "fc1.bias": (100,),
          "fc2.weight": (10, 100), "fc2.bias": (10,)}
assert sum(int(np.prod(s)) for s in SHAPES.values()) == 825_398  # model.py's EXPECTED_PARAMS
CPU_FLAGS = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8"]


def load_record(path):
    """The shipped record's tensors in PyTorch's layout (Burn stores Linear weights [in, out])."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    w = {}
    for name, shape in SHAPES.items():
        h = header[name]
        assert h["dtype"] == "F32", (name, h["dtype"])
        a, b = h["data_offsets"]
        t = np.frombuffer(raw[8 + n + a:8 + n + b], "<f4").reshape(h["shape"])
        w[name] = np.ascontiguousarray(t.T if name.startswith("fc") and t.ndim == 2 else t)
        assert w[name].shape == shape, (name, w[name].shape)
    return w, json.loads(header.get("__metadata__", {}).get("cifar_cnn", "{}"))


def load_pth_fixture(path):
    """A torch.save'd state dict of SimpleCNN, read without torch: its eight storages differ in
    size, so each is known by its byte count (little-endian f32, as its byteorder file says)."""
    w, by_size = {}, {4 * int(np.prod(s)): k for k, s in SHAPES.items()}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if re.search(r"/data/\d+$", name):
                data = z.read(name)
                key = by_size[len(data)]
                w[key] = np.frombuffer(data, "<f4").reshape(SHAPES[key])
    assert set(w) == set(SHAPES), sorted(w)
    return w


def build_onnx(w):
    """model.py's SimpleCNN as torch.onnx.export writes it (opset 17, dynamic batch)."""
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "fc2.weight", "fc2.bias"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "SimpleCNN",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def taps(src, dst):
    """preprocess.rs's `taps`: per output position, the first input pixel and the normalised
    triangle weights, in f32 (padded with zero weights to a common width)."""
    f = np.float32
    ratio = f(src) / f(dst)
    sratio = max(ratio, f(1.0))
    rows = []
    for out in range(dst):
        centre = (f(out) + f(0.5)) * ratio
        left = int(min(max(np.floor(centre - sratio), 0), src - 1))
        right = int(min(max(np.ceil(centre + sratio), left + 1), src))
        centre = centre - f(0.5)
        ws = [max(f(1.0) - abs((f(i) - centre) / sratio), f(0.0)) for i in range(left, right)]
        total = f(0.0)
        for x in ws:
            total = total + x
        rows.append((left, [x / total for x in ws]))
    width = max(len(ws) for _, ws in rows)
    idx = np.array([[min(left + i, src - 1) for i in range(width)] for left, _ in rows])
    wts = np.array([ws + [0.0] * (width - len(ws)) for _, ws in rows], np.float32)
    return idx, wts


def preprocess(paths, side=64):
    """JPEG files → [n, 3, 64, 64] f32: resize as preprocess::resize (vertical pass, then
    horizontal, f32, taps added in order; adding a zero-weight tap changes nothing), then round
    half away from zero to bytes, then x / 127.5 − 1."""
    out = np.empty((len(paths), 3, side, side), np.float32)
    cache = {}
    for n, p in enumerate(paths):
        img = np.asarray(Image.open(p).convert("RGB"), np.float32)  # h, w, 3
        h, w, _ = img.shape
        if (h, w) != (side, side):
            vi, vw = cache.setdefault(h, taps(h, side))
            hi, hw = cache.setdefault(w, taps(w, side))
            tmp = np.zeros((side, w, 3), np.float32)
            for i in range(vi.shape[1]):
                tmp += img[vi[:, i]] * vw[:, i, None, None]
            res = np.zeros((side, side, 3), np.float32)
            for i in range(hi.shape[1]):
                res += tmp[:, hi[:, i]] * hw[None, :, i, None]
            img = np.floor(np.clip(res, 0, 255).astype(np.float64) + 0.5)
        out[n] = (img.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1)
    return out


def images(data, split, per_class):
    """The first `per_class` images (sorted names) of every class, and their labels."""
    paths, labels = [], []
    for label, c in enumerate(CLASSES):
        found = sorted(glob.glob(os.path.join(data, split, c, "*.jpg")))[:per_class]
        assert found, f"no images in {os.path.join(data, split, c)}"
        paths += found
        labels += [label] * len(found)
    return preprocess(paths), np.array(labels)


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def images_per_s(s, x, seconds, warmup=20):
    for _ in range(warmup):
        s.run(None, {"x": x})
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        s.run(None, {"x": x})
        n += 1
    return n * len(x) / (time.perf_counter() - t0)


def predict(s, x, batch=100):
    return np.concatenate([s.run(None, {"x": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def quantize(fp32, out_dir, calib):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calib[i:i + 50]} for i in range(0, len(calib), 50)])

        def get_next(self):
            return next(self.it, None)

    pre, int8 = os.path.join(out_dir, "cnn.pre.onnx"), os.path.join(out_dir, "cnn.int8.onnx")
    quant_pre_process(fp32, pre, skip_symbolic_shape=True)  # static shapes: no sympy needed
    quantize_static(pre, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return int8


def criterion_throughput(path):
    """{variant: {batch: images/s}} from criterion's report of `fastcnn/<variant><batch>`
    (variant "" for FP32 on the widest instruction set, "int8/", "avx2/", "int8/avx2/"): the
    middle (estimate) of each thrpt line. Lines of a `change:` block are in %, not elem/s, so
    they do not match."""
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
    res, current = {}, None
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.match(r"fastcnn/((?:int8/)?(?:avx2/)?)(\d+)(\s|$)", line)
        if m:
            current = (m.group(1), int(m.group(2)))
        m = re.search(r"thrpt:\s*\[\S+ \w*elem/s (\S+) (\w*)elem/s", line)
        if m and current is not None:
            res.setdefault(current[0], {})[current[1]] = float(m.group(1)) * scale[m.group(2)]
            current = None
    return res


def cpu():
    info = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    field = dict(re.findall(r"^([^:\n]+):\s*(.*)$", info, re.M))
    flags = field.get("Flags", "").split()
    flags = {f: f in flags for f in CPU_FLAGS}
    return field.get("Model name", "?"), flags, field.get("CPU(s)", "?")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the unpacked cifar10/ folder (train/, test/)")
    ap.add_argument("--weights", default=os.path.join(ROOT, "assets", "model.safetensors"))
    ap.add_argument("--criterion",
                    help="criterion's output of `cargo bench -p fastcnn --bench forward`")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak", type=float,
                    help="the measured FP32 FMA peak in GFLOP/s (scripts/fma-peak.c), for shares")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per point")
    ap.add_argument("--calib-per-class", type=int, default=50)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--work", help="folder for the ONNX files (default: a new temporary one)")
    a = ap.parse_args()
    a.work = a.work or tempfile.mkdtemp(prefix="bench-peers-")
    os.makedirs(a.work, exist_ok=True)

    # 1. The graph is the original's network: same logits as PyTorch on the fixture's weights.
    fixtures = os.path.join(ROOT, "crates", "cli", "tests", "fixtures")
    ref = json.load(open(os.path.join(fixtures, "simple_cnn_logits.json")))
    i = np.arange(2 * 3 * 64 * 64, dtype=np.int64)
    x = (((i * 37) % 255).astype(np.float32) / np.float32(127.5) - 1).reshape(2, 3, 64, 64)
    check = os.path.join(a.work, "fixture.onnx")
    with open(check, "wb") as f:
        pth = load_pth_fixture(os.path.join(fixtures, "simple_cnn.pth"))
        f.write(build_onnx(pth).SerializeToString())
    diff = np.abs(session(check, 1).run(None, {"x": x})[0] - np.array(ref["logits"])).max()
    assert diff < 1e-4, f"ONNX graph differs from PyTorch's logits by {diff}"
    print(f"graph check: ORT on the PyTorch fixture's weights gives torch "
          f"{ref['torch_version']}'s logits (max |diff| {diff:.1e})")

    # 2. The shipped weights, FP32 and int8.
    weights, meta = load_record(a.weights)
    fp32 = os.path.join(a.work, "cnn.onnx")
    with open(fp32, "wb") as f:
        f.write(build_onnx(weights).SerializeToString())
    t0 = time.perf_counter()
    calib, _ = images(a.data, "train", a.calib_per_class)
    test_x, test_y = images(a.data, "test", a.test_per_class)
    print(f"preprocessed {len(calib)} training images (calibration) and {len(test_x)} test images "
          f"in {time.perf_counter() - t0:.1f} s")
    models = {"fp32": fp32, "int8": quantize(fp32, a.work, calib)}
    sessions = {k: session(p, a.threads) for k, p in models.items()}

    preds = {k: predict(s, test_x).argmax(1) for k, s in sessions.items()}
    acc = {k: float((p == test_y).mean()) for k, p in preds.items()}
    recorded = meta.get("test_accuracy")
    print(f"top-1 on {len(test_x)} test images ({a.test_per_class} per class): "
          f"ORT FP32 {acc['fp32']:.3f}, ORT int8 {acc['int8']:.3f}; int8 agrees with FP32 on "
          f"{(preds['fp32'] == preds['int8']).mean():.1%}"
          + (f" (the record's own figure, all 10,000: {recorded})" if recorded else ""))

    # 3. Speed: real test images, tiled up to the batch.
    speed = {k: {} for k in sessions}
    for bs in (1, 16, 64):
        xb = np.ascontiguousarray(np.resize(test_x, (bs, 3, 64, 64)))
        for k, s in sessions.items():
            speed[k][bs] = images_per_s(s, xb, a.seconds)
    fast = criterion_throughput(a.criterion) if a.criterion else {}
    f32, f8 = fast.get("", {}), fast.get("int8/", {})

    model, flags, ncpu = cpu()
    print(f"\nCPU: {model}, {ncpu} CPUs; "
          + " ".join(f"{f}={'yes' if v else 'no'}" for f, v in flags.items()))
    print(f"onnxruntime {ort.__version__}, {a.threads} intra-op threads, 1 inter-op; "
          f"fastcnn with RAYON_NUM_THREADS={a.threads}; ~{a.seconds:g} s per ORT point\n")

    def num(v):
        return f"{v:,.0f}" if v else "—"

    def ratio(f, o):
        return f"{f / o:.2f}×" if f and o else "—"
    print("| batch | fastcnn FP32 | fastcnn int8 | ORT FP32 | ORT int8 (img/s) "
          "| FP32 ÷ ORT FP32 | int8 ÷ ORT FP32 | int8 ÷ ORT int8 |")
    print("|---|---|---|---|---|---|---|---|")
    for bs in (1, 16, 64):
        o32, o8 = speed["fp32"][bs], speed["int8"][bs]
        print(f"| {bs} | {num(f32.get(bs))} | {num(f8.get(bs))} | {num(o32)} | {num(o8)} "
              f"| {ratio(f32.get(bs), o32)} | {ratio(f8.get(bs), o32)} | {ratio(f8.get(bs), o8)} |")
    for variant, label in (("avx2/", "FP32"), ("int8/avx2/", "int8")):
        if fast.get(variant):
            print(f"fastcnn {label} on its AVX2 kernels: "
                  + ", ".join(f"batch {bs} {num(fast[variant].get(bs))}" for bs in (1, 16, 64)))
    int8 = meta.get("int8") or {}
    print(f"fastcnn's top-1 (the record's figures, all 10,000 test images): FP32 "
          f"{meta.get('test_accuracy')}, int8 {int8.get('test_accuracy')}")
    if a.peak:
        # 14.6 MFLOP per image forward as direct convolution (conv1 3.54, conv2 9.44, fc1 1.64,
        # fc2 0.002): an effective rate for fastcnn, whose Winograd conv2 does fewer.
        share = lambda v: f"{v * 14.6e-3:,.0f} GFLOP/s ({v * 14.6e-3 / a.peak:.0%})" if v else "—"
        print(f"\neffective rate, share of the measured FP32 FMA peak ({a.peak:,.0f} GFLOP/s, "
              "14.6 MFLOP per image):")
        for bs in (1, 16, 64):
            print(f"  batch {bs}: fastcnn FP32 {share(f32.get(bs))}, "
                  f"ORT FP32 {share(speed['fp32'][bs])}")
    print("\n" + json.dumps({"cpu": model, "flags": flags, "threads": a.threads,
                             "onnxruntime": ort.__version__, "fastcnn": fast,
                             "ort_fp32": speed["fp32"], "ort_int8": speed["int8"],
                             "top1": {**acc, "images": len(test_x)}}))


if __name__ == "__main__":
    main()
